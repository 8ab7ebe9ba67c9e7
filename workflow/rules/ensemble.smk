# Stage 4, ensemble (logivote.ensemble): the adapters' answers become votes and the submission (recipe step 5),
# and, with evaluation on, the metrics and their plots.


rule vote:
    input:
        predictions=prediction_files(),
        test="results/data/test.jsonl",
    output:
        "results/votes/round1.jsonl",
    log:
        "logs/vote.log",
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
    conda:
        "../../envs/data.yaml"
    params:
        subsets=SUBSETS,
    script:
        "../scripts/vote.py"


rule submission:
    input:
        test="results/data/test.jsonl",
        round1="results/votes/round1.jsonl",
        round2="results/votes/round2.jsonl",
    output:
        "results/submission.jsonl",
    log:
        "logs/submission.log",
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
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
        adapters=report(
            "results/eval/adapters.tsv",
            caption="../report/adapters_table.rst",
            category="Evaluation",
        ),
        vote_size=report(
            "results/eval/vote_size.tsv",
            caption="../report/vote_size_table.rst",
            category="Evaluation",
        ),
    log:
        "logs/evaluate.log",
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
    conda:
        "../../envs/data.yaml"
    params:
        subsets=SUBSETS,
        draws=config["evaluation"]["vote_size_draws"],
        seed=config["evaluation"]["seed"],
    script:
        "../scripts/evaluate.py"


rule plots:
    input:
        "results/eval/metrics.json",
    output:
        **{
            name: report(
                f"results/eval/plots/{name}.svg",
                caption=f"../report/{name}.rst",
                category=category,
            )
            for name, category in PLOTS.items()
        },
    log:
        "logs/plots.log",
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/plots.py"
