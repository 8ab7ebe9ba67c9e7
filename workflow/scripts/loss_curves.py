from logivote.ensemble.plots import loss_curves
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    loss_curves({str(k): path for k, path in zip(snakemake.params.subsets, snakemake.input)}, snakemake.output[0])
