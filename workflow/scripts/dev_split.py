from logivote.data.bagging import write_dev_split
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    write_dev_split(train_path=snakemake.input[0], seed=snakemake.params.seed, fraction=snakemake.params.fraction,
                    pool_out=snakemake.output.pool, dev_out=snakemake.output.dev)
