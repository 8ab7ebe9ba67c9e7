from logivote.ensemble.voting import submission
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    submission(test_path=snakemake.input.test, round1_path=snakemake.input.round1, round2_path=snakemake.input.round2,
               out_path=snakemake.output[0])
