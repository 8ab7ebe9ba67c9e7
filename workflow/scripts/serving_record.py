from logivote.logs import log_to
from logivote.serving.inference import merge_serving

with log_to(snakemake.log[0]):
    merge_serving(snakemake.input, snakemake.output[0])
