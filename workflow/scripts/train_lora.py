from logivote.logs import log_to
from logivote.training.train import train_lora_job

with log_to(snakemake.log[0]):
    train_lora_job(
        snakemake.input.base,
        list(snakemake.input.subsets),
        snakemake.output[0],
        snakemake.params.checkpoints,
        snakemake.params.settings,
        snakemake.params.adapters,
        snakemake.threads,
        snakemake.resources.gpu,
    )
