from logivote.inference import revote
from logivote.logs import log_to

with log_to(snakemake.log.main):
    revote(
        snakemake.input.base,
        dict(zip(snakemake.params.subsets, snakemake.input.adapters)),
        snakemake.input.test,
        snakemake.input.round1,
        snakemake.output[0],
        snakemake.params.cache,
        snakemake.params.serve,
        snakemake.params.client,
        snakemake.params.vote,
        snakemake.log.server,
    )
