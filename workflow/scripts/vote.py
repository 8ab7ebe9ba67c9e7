from logivote.ensemble.voting import vote
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    vote(
        snakemake.input.test,
        dict(zip(snakemake.params.subsets, snakemake.input.predictions)),
        snakemake.output[0],
    )
