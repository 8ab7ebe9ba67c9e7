from logivote.ensemble.evaluation import evaluate
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    subsets = snakemake.params.subsets
    evaluate(
        dict(zip(subsets, snakemake.input.oob)),
        dict(zip(subsets, snakemake.input.dev)),
        snakemake.input.pool,
        dict(zip(subsets, snakemake.input.predictions)),
        snakemake.input.round1,
        snakemake.input.round2,
        snakemake.output.metrics,
        snakemake.output.adapters,
        snakemake.output.vote_size,
        snakemake.params.draws,
        snakemake.params.seed,
        snakemake.input.dev_questions,
        snakemake.input.dev_round2,
        snakemake.input.serving,
    )
