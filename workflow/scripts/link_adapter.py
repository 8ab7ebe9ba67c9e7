from logivote.logs import log_to
from logivote.training.job import link_adapter

with log_to(snakemake.log[0]):
    link_adapter(snakemake.params.source, snakemake.output[0])
