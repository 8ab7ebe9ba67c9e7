from logivote.base.models import prepare_base_model
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    prepare_base_model(spec=snakemake.params.spec, question_files=list(snakemake.input), out_dir=snakemake.output[0],
                       threads=snakemake.threads)
