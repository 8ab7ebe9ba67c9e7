from logivote.ensemble.voting import submission
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    submission(snakemake.input.test, snakemake.input.round1, snakemake.input.round2, snakemake.output[0])
