from logivote.logs import log_to
from logivote.train import train_lora_job

with log_to(snakemake.log[0]):
    train_lora_job(
        snakemake.input.base,
        snakemake.input.subset,
        snakemake.output[0],
        snakemake.params.checkpoints,
        snakemake.params.settings,
        snakemake.threads,
        snakemake.resources.gpu,
    )
