from logivote.ensemble.evaluation import evaluate
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    subsets = snakemake.params.subsets
    evaluate(
        oob_paths=dict(zip(subsets, snakemake.input.oob)),
        dev_paths=dict(zip(subsets, snakemake.input.dev)),
        pool_path=snakemake.input.pool,
        prediction_paths=dict(zip(subsets, snakemake.input.predictions)),
        round1_path=snakemake.input.round1,
        round2_path=snakemake.input.round2,
        out_json=snakemake.output.metrics,
        out_adapters=snakemake.output.adapters,
        out_vote_size=snakemake.output.vote_size,
        draws=snakemake.params.draws,
        seed=snakemake.params.seed,
        dev_questions_path=snakemake.input.dev_questions,
        dev_round2_path=snakemake.input.dev_round2,
        serving_path=snakemake.input.serving,
    )
