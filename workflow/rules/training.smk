# Stage 3, training (logivote.training): K LoRA adapters per job over the frozen base (recipe step 3), each
# adapter linked into its own folder, and the loss curves drawn.


rule train_lora:
    input:
        base=BASE_MODEL_DIR,
        subsets=job_subsets,
    output:
        directory("results/train_jobs/{job}"),
    log:
        "logs/train_lora/{job}.log",
    benchmark:
        "benchmarks/train_lora/{job}.tsv"
    conda:
        env_file("train")
    threads: config["train"]["threads"]
    resources:
        gpu=config["train"]["gpus"],
        mem_mb=config["train"]["mem_mb"],
    params:
        settings=config["train"],
        adapters=lambda wildcards: job_adapters(
            int(wildcards.job), N_SUBSETS, ADAPTERS_PER_JOB
        ),
        checkpoints="results/checkpoints/job-{job}",
    script:
        "../scripts/train_lora.py"


rule link_adapter:
    input:
        adapter_job_dir,
    output:
        directory("results/adapters/{k}"),
    log:
        "logs/link_adapter/{k}.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        source=lambda wildcards: f"results/train_jobs/{job_of(int(wildcards.k))}/{wildcards.k}",
    script:
        "../scripts/link_adapter.py"


rule loss_curves:
    input:
        adapter_dirs(),
    output:
        report(
            "results/plots/loss_curves.svg",
            caption="../report/loss_curves.rst",
            category="Training",
        ),
    log:
        "logs/loss_curves.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        subsets=SUBSETS,
    script:
        "../scripts/loss_curves.py"
