rule predict:
    input:
        unpack(predict_eval_inputs),
        base=BASE_MODEL_DIR,
        adapters=shard_adapter_dirs,
        test="results/data/test.jsonl",
    output:
        directory("results/predict_shards/{shard}"),
    params:
        evaluation=EVALUATION,
        subsets=lambda wildcards: shard_subsets(wildcards),
        serve=config["serve"],
        client=config["client"],
        cache=lambda wildcards: shard_cache(ANSWER_CACHE, int(wildcards.shard), SHARDS),
        # one server holds every adapter: it asks round 2 ahead, and revote starts none (logivote.serving.inference.predict)
        round2=config["vote"] if SHARDS == 1 else None,
    threads: config["serve"]["threads"]
    resources:
        gpu=config["serve"]["gpus"],
        mem_mb=config["serve"]["mem_mb"],
    log:
        main="logs/predict/{shard}.log",
        server="logs/vllm/predict/{shard}.log",
    benchmark:
        "benchmarks/predict/{shard}.tsv"
    conda:
        env_file("serve")
    script:
        "../scripts/predict.py"


rule prediction:
    input:
        adapter_shard_dir,
    output:
        prediction="results/predictions/{k}.jsonl",
        oob=["results/eval/oob/{k}.jsonl"] if EVALUATION else [],
        dev=["results/eval/dev/{k}.jsonl"] if EVALUATION else [],
    localrule: True  # hard links: never worth a cluster job
    log:
        "logs/prediction/{k}.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/prediction.py"


rule serving:
    input:
        expand("results/predict_shards/{shard}", shard=range(SHARDS)),
    output:
        SERVING_RECORD,
    localrule: True  # one small JSON file
    log:
        "logs/serving.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/serving.py"


rule vote:
    input:
        predictions=prediction_files(),
        test="results/data/test.jsonl",
    output:
        "results/votes/round1.jsonl",
    params:
        subsets=SUBSETS,
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
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
        dev=["results/data/dev.jsonl"] if EVALUATION else [],
        dev_greedy=eval_files("dev"),
    output:
        round2="results/votes/round2.jsonl",
        dev_round2=["results/eval/dev_round2.jsonl"] if EVALUATION else [],
    params:
        evaluation=EVALUATION,
        subsets=SUBSETS,
        serve=config["serve"],
        client=config["client"],
        vote=config["vote"],
        cache=ANSWER_CACHE,
    threads: config["serve"]["threads"]
    resources:
        gpu=config["serve"]["gpus"],
        mem_mb=config["serve"]["mem_mb"],
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
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
    log:
        "logs/submission.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/submission.py"


rule evaluate:
    input:
        oob=eval_files("oob"),
        dev=eval_files("dev"),
        dev_questions="results/data/dev.jsonl",
        dev_round2="results/eval/dev_round2.jsonl",
        pool="results/data/pool.jsonl",
        predictions=prediction_files(),
        round1="results/votes/round1.jsonl",
        round2="results/votes/round2.jsonl",
        serving=SERVING_RECORD,
    output:
        metrics="results/eval/metrics.json",
        adapters=report("results/eval/adapters.tsv", caption="../report/adapters_table.rst", category="Evaluation"),
        vote_size=report("results/eval/vote_size.tsv", caption="../report/vote_size_table.rst", category="Evaluation"),
    params:
        subsets=SUBSETS,
        draws=config["evaluation"]["vote_size_draws"],
        seed=config["evaluation"]["seed"],
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
    log:
        "logs/evaluate.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/evaluate.py"


rule plots:
    input:
        "results/eval/metrics.json",
    output:
        adapter_accuracy=report("results/eval/plots/adapter_accuracy.svg", caption="../report/adapter_accuracy.rst", category="Evaluation"),
        vote_size=report("results/eval/plots/vote_size.svg", caption="../report/vote_size.rst", category="Evaluation"),
        vote_share_accuracy=report("results/eval/plots/vote_share_accuracy.svg", caption="../report/vote_share_accuracy.rst", category="Evaluation"),
        round1_vote_share=report("results/eval/plots/round1_vote_share.svg", caption="../report/round1_vote_share.rst", category="Test set"),
        agreement=report("results/eval/plots/agreement.svg", caption="../report/agreement.rst", category="Test set"),
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
    log:
        "logs/plots.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/plots.py"
