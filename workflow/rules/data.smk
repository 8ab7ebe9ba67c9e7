# Stage 1, data (logivote.data): the raw puzzles flattened to one question per line, the dev puzzles held out,
# and the seeded 80 % bags, one per adapter (recipe steps 1 and 2).

rule flatten:
    input:
        source_paths(),
    output:
        train="results/data/train.jsonl",
        test="results/data/test.jsonl",
    params:
        sources=config["sources"],
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
    log:
        "logs/flatten.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/flatten.py"


rule dev_split:
    input:
        "results/data/train.jsonl",
    output:
        pool="results/data/pool.jsonl",
        dev="results/data/dev.jsonl",
    params:
        seed=config["evaluation"]["seed"],
        fraction=config["evaluation"]["dev_fraction"],
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
    log:
        "logs/dev_split.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/dev_split.py"


rule subset:
    input:
        bag_source(),
    output:
        subset="results/subsets/{k}.jsonl",
        oob="results/subsets/{k}.oob.txt",
    params:
        fraction=config["bagging"]["fraction"],
        base_seed=config["bagging"]["base_seed"],
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
    log:
        "logs/subset/{k}.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/subset.py"
