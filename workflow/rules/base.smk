# Stage 2, base (logivote.base): the model the adapters are trained over and served on, built or downloaded
# once, as GPTQ-Int4.


rule base_model:
    input:
        base_model_inputs(),
    output:
        directory(BASE_MODEL_DIR),
    log:
        "logs/base_model.log",
    benchmark:
        "benchmarks/base_model.tsv"
    conda:
        env_file("train")
    threads: config["base_model"]["threads"]
    resources:
        gpu=base_model_gpus(),
    params:
        spec=config["base_model"],
    script:
        "../scripts/base_model.py"
