from logivote.data.bagging import write_dev_split
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    write_dev_split(snakemake.input[0], snakemake.params.seed, snakemake.params.fraction, snakemake.output.pool, snakemake.output.dev)
