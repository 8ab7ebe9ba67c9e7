# Stage 5, serving (logivote.serving): vLLM servers with the adapters on them, asked every question (recipe
# step 4), and round 2's samples for the questions without a strict majority (step 5).


rule predict:
    input:
        unpack(predict_eval_inputs),
        base=BASE_MODEL_DIR,
        adapters=shard_adapter_dirs,
        test="results/data/test.jsonl",
    output:
        directory("results/predict_shards/{shard}"),
    log:
        main="logs/predict/{shard}.log",
        server="logs/vllm/predict/{shard}.log",
    benchmark:
        "benchmarks/predict/{shard}.tsv"
    conda:
        env_file("serve")
    threads: config["serve"]["threads"]
    resources:
        gpu=config["serve"]["gpus"],
        mem_mb=config["serve"]["mem_mb"],
    params:
        evaluation=EVALUATION,
        subsets=lambda wildcards: shard_subsets(wildcards),
        serve=config["serve"],
        client=config["client"],
        cache=lambda wildcards: shard_cache(ANSWER_CACHE, int(wildcards.shard), SHARDS),
        # one server holds every adapter: it asks round 2 ahead, and revote starts none (logivote.serving.inference.predict)
        round2=config["vote"] if SHARDS == 1 else None,
    script:
        "../scripts/predict.py"


rule link_prediction:
    input:
        adapter_shard_dir,
    output:
        prediction="results/predictions/{k}.jsonl",
        oob=["results/eval/oob/{k}.jsonl"] if EVALUATION else [],
        dev=["results/eval/dev/{k}.jsonl"] if EVALUATION else [],
    log:
        "logs/link_prediction/{k}.log",
    localrule: True  # hard links: never worth a cluster job
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/link_prediction.py"


rule serving_record:
    input:
        expand("results/predict_shards/{shard}", shard=range(SHARDS)),
    output:
        SERVING_RECORD,
    log:
        "logs/serving_record.log",
    localrule: True  # one small JSON file
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/serving_record.py"


rule revote:
    input:
        base=BASE_MODEL_DIR,
        adapters=adapter_dirs(),
        test="results/data/test.jsonl",
        round1="results/votes/round1.jsonl",
        dev=["results/data/dev.jsonl"] if EVALUATION else [],
        dev_greedy=eval_files("dev"),
    output:
        round2="results/votes/round2.jsonl",
        dev_round2=["results/eval/dev_round2.jsonl"] if EVALUATION else [],
    log:
        main="logs/revote.log",
        server="logs/vllm/revote.log",
    benchmark:
        "benchmarks/revote.tsv"
    conda:
        env_file("serve")
    threads: config["serve"]["threads"]
    resources:
        gpu=config["serve"]["gpus"],
        mem_mb=config["serve"]["mem_mb"],
    params:
        evaluation=EVALUATION,
        subsets=SUBSETS,
        serve=config["serve"],
        client=config["client"],
        vote=config["vote"],
        cache=ANSWER_CACHE,
    script:
        "../scripts/revote.py"
