# Stage 1, data (logivote.data): the raw puzzles flattened to one question per line, the dev puzzles held out,
# and the seeded 80 % bags, one per adapter (recipe steps 1 and 2).


rule flatten:
    input:
        source_paths(),
    output:
        train="results/data/train.jsonl",
        test="results/data/test.jsonl",
    log:
        "logs/flatten.log",
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
    conda:
        "../../envs/data.yaml"
    params:
        sources=config["sources"],
    script:
        "../scripts/flatten.py"


rule dev_split:
    input:
        "results/data/train.jsonl",
    output:
        pool="results/data/pool.jsonl",
        dev="results/data/dev.jsonl",
    log:
        "logs/dev_split.log",
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
    conda:
        "../../envs/data.yaml"
    params:
        seed=config["evaluation"]["seed"],
        fraction=config["evaluation"]["dev_fraction"],
    script:
        "../scripts/dev_split.py"


rule subset:
    input:
        bag_source(),
    output:
        subset="results/subsets/{k}.jsonl",
        oob="results/subsets/{k}.oob.txt",
    log:
        "logs/subset/{k}.log",
    localrule: True  # seconds of CPU on small files: never worth a cluster job (docs/slurm.md)
    conda:
        "../../envs/data.yaml"
    params:
        fraction=config["bagging"]["fraction"],
        base_seed=config["bagging"]["base_seed"],
    script:
        "../scripts/subset.py"
