from logivote.logs import log_to
from logivote.serving.inference import DevRound2, revote

with log_to(snakemake.log.main):
    subsets = snakemake.params.subsets
    dev = None
    if snakemake.params.evaluation:
        dev = DevRound2(snakemake.input.dev[0], dict(zip(subsets, snakemake.input.dev_greedy)), snakemake.output.dev_round2[0])
    revote(
        snakemake.input.base,
        dict(zip(subsets, snakemake.input.adapters)),
        snakemake.input.test,
        snakemake.input.round1,
        snakemake.output.round2,
        snakemake.params.cache,
        snakemake.params.serve,
        snakemake.params.client,
        snakemake.params.vote,
        snakemake.log.server,
        dev,
    )
