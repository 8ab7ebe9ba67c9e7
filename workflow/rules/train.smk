rule base_model:
    input:
        base_model_inputs(),
    output:
        directory(BASE_MODEL_DIR),
    params:
        spec=config["base_model"],
    log:
        "logs/base_model.log",
    conda:
        env_file("train")
    script:
        "../scripts/base_model.py"


rule train_lora:
    input:
        base=BASE_MODEL_DIR,
        subset="results/subsets/{k}.jsonl",
    output:
        directory("results/adapters/{k}"),
    params:
        settings=config["train"],
        checkpoints="results/checkpoints/{k}",
    threads: config["train"]["threads"]
    resources:
        gpu=config["train"]["gpus"],
        mem_mb=config["train"]["mem_mb"],
    log:
        "logs/train_lora/{k}.log",
    benchmark:
        "benchmarks/train_lora/{k}.tsv"
    conda:
        env_file("train")
    script:
        "../scripts/train_lora.py"
