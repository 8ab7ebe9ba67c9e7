from logivote.logs import log_to
from logivote.serving.inference import EvalInputs, predict_shard

with log_to(snakemake.log.main):
    subsets = snakemake.params.subsets
    evaluation = None
    if snakemake.params.evaluation:
        evaluation = EvalInputs(pool=snakemake.input.pool, dev=snakemake.input.dev, oob=dict(zip(subsets, snakemake.input.oob)))
    predict_shard(
        snakemake.input.base,
        dict(zip(subsets, snakemake.input.adapters)),
        snakemake.input.test,
        snakemake.output[0],
        snakemake.params.cache,
        snakemake.params.serve,
        snakemake.params.client,
        snakemake.log.server,
        evaluation,
        round2=snakemake.params.round2,
    )
