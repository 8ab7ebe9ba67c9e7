from logivote.logs import log_to
from logivote.serving.inference import DevRound2, revote

with log_to(snakemake.log.main):
    subsets = snakemake.params.subsets
    dev = None
    if snakemake.params.evaluation:
        dev = DevRound2(dev=snakemake.input.dev[0], greedy=dict(zip(subsets, snakemake.input.dev_greedy)),
                        out=snakemake.output.dev_round2[0])
    revote(
        base_dir=snakemake.input.base,
        adapter_dirs=dict(zip(subsets, snakemake.input.adapters)),
        test_path=snakemake.input.test,
        round1_path=snakemake.input.round1,
        out_path=snakemake.output.round2,
        cache_path=snakemake.params.cache,
        serve=snakemake.params.serve,
        client=snakemake.params.client,
        vote_settings=snakemake.params.vote,
        server_log=snakemake.log.server,
        dev=dev,
    )
