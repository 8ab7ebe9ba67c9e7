from logivote.inference import predict
from logivote.logs import log_to

with log_to(snakemake.log.main):
    predict(
        snakemake.input.base,
        dict(zip(snakemake.params.subsets, snakemake.input.adapters)),
        snakemake.input.test,
        dict(zip(snakemake.params.subsets, snakemake.output)),
        snakemake.params.cache,
        snakemake.params.serve,
        snakemake.params.client,
        snakemake.log.server,
    )
