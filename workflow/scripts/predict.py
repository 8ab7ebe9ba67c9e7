from logivote.logs import log_to
from logivote.serving.inference import EvalInputs, predict_shard

with log_to(snakemake.log.main):
    subsets = snakemake.params.subsets
    evaluation = None
    if snakemake.params.evaluation:
        evaluation = EvalInputs(pool=snakemake.input.pool, dev=snakemake.input.dev, oob=dict(zip(subsets, snakemake.input.oob)))
    predict_shard(
        base_dir=snakemake.input.base,
        adapter_dirs=dict(zip(subsets, snakemake.input.adapters)),
        test_path=snakemake.input.test,
        shard_dir=snakemake.output[0],
        cache_path=snakemake.params.cache,
        serve=snakemake.params.serve,
        client=snakemake.params.client,
        server_log=snakemake.log.server,
        evaluation=evaluation,
        round2=snakemake.params.round2,
    )
