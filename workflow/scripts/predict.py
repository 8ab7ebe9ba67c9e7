from logivote.inference import EvalFiles, predict
from logivote.logs import log_to

with log_to(snakemake.log.main):
    subsets = snakemake.params.subsets
    evaluation = None
    if snakemake.params.evaluation:
        evaluation = EvalFiles(
            pool=snakemake.input.pool,
            dev=snakemake.input.dev,
            oob=dict(zip(subsets, snakemake.input.oob)),
            oob_out=dict(zip(subsets, snakemake.output.oob)),
            dev_out=dict(zip(subsets, snakemake.output.dev)),
        )
    predict(
        snakemake.input.base,
        dict(zip(subsets, snakemake.input.adapters)),
        snakemake.input.test,
        dict(zip(subsets, snakemake.output.predictions)),
        snakemake.params.cache,
        snakemake.params.serve,
        snakemake.params.client,
        snakemake.log.server,
        evaluation,
        serving_out=snakemake.output.serving,
    )
