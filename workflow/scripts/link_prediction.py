from logivote.logs import log_to
from logivote.serving.inference import link_prediction

with log_to(snakemake.log[0]):
    link_prediction(
        snakemake.input[0],
        int(snakemake.wildcards.k),
        snakemake.output.prediction,
        snakemake.output.oob[0] if snakemake.output.oob else None,
        snakemake.output.dev[0] if snakemake.output.dev else None,
    )
