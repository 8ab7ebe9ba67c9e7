from logivote.logs import log_to
from logivote.serving.inference import link_prediction

with log_to(snakemake.log[0]):
    link_prediction(
        shard_dir=snakemake.input[0],
        k=int(snakemake.wildcards.k),
        prediction=snakemake.output.prediction,
        oob=snakemake.output.oob[0] if snakemake.output.oob else None,
        dev=snakemake.output.dev[0] if snakemake.output.dev else None,
    )
