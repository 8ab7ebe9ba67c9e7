from logivote.ensemble.plots import PLOTS, draw_all
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    draw_all(snakemake.input[0], {name: getattr(snakemake.output, name) for name in PLOTS})
