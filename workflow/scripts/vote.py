from logivote.ensemble.voting import vote
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    vote(
        test_path=snakemake.input.test,
        prediction_paths=dict(zip(snakemake.params.subsets, snakemake.input.predictions)),
        out_path=snakemake.output[0],
    )
