rule predict:
    input:
        base=BASE_MODEL_DIR,
        adapters=adapter_dirs(),
        test="results/data/test.jsonl",
    output:
        prediction_files(),
    params:
        subsets=SUBSETS,
        serve=config["serve"],
        client=config["client"],
        cache=ANSWER_CACHE,
    threads: config["serve"]["threads"]
    resources:
        gpu=config["serve"]["gpus"],
    log:
        main="logs/predict.log",
        server="logs/vllm/predict.log",
    benchmark:
        "benchmarks/predict.tsv"
    conda:
        env_file("serve")
    script:
        "../scripts/predict.py"


rule vote:
    input:
        predictions=prediction_files(),
        test="results/data/test.jsonl",
    output:
        "results/votes/round1.jsonl",
    params:
        subsets=SUBSETS,
    log:
        "logs/vote.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/vote.py"


rule revote:
    input:
        base=BASE_MODEL_DIR,
        adapters=adapter_dirs(),
        test="results/data/test.jsonl",
        round1="results/votes/round1.jsonl",
    output:
        "results/votes/round2.jsonl",
    params:
        subsets=SUBSETS,
        serve=config["serve"],
        client=config["client"],
        vote=config["vote"],
        cache=ANSWER_CACHE,
    threads: config["serve"]["threads"]
    resources:
        gpu=config["serve"]["gpus"],
    log:
        main="logs/revote.log",
        server="logs/vllm/revote.log",
    benchmark:
        "benchmarks/revote.tsv"
    conda:
        env_file("serve")
    script:
        "../scripts/revote.py"


rule submission:
    input:
        test="results/data/test.jsonl",
        round1="results/votes/round1.jsonl",
        round2="results/votes/round2.jsonl",
    output:
        "results/submission.jsonl",
    log:
        "logs/submission.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/submission.py"
