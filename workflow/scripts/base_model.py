from logivote.base.models import prepare_base_model
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    prepare_base_model(snakemake.params.spec, list(snakemake.input), snakemake.output[0], snakemake.threads)
