from logivote.logs import log_to
from logivote.training.job import train_lora_job

with log_to(snakemake.log[0]):
    train_lora_job(
        base_dir=snakemake.input.base,
        subset_paths=list(snakemake.input.subsets),
        job_dir=snakemake.output[0],
        checkpoint_dir=snakemake.params.checkpoints,
        section=snakemake.params.settings,
        adapters=snakemake.params.adapters,
        threads=snakemake.threads,
        gpus=snakemake.resources.gpu,
    )
