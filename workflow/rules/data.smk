rule flatten:
    input:
        source_paths(),
    output:
        train="results/data/train.jsonl",
        test="results/data/test.jsonl",
    params:
        sources=config["sources"],
    log:
        "logs/flatten.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/flatten.py"


rule subset:
    input:
        "results/data/train.jsonl",
    output:
        subset="results/subsets/{k}.jsonl",
        oob="results/subsets/{k}.oob.txt",
    params:
        fraction=config["bagging"]["fraction"],
        base_seed=config["bagging"]["base_seed"],
    log:
        "logs/subset/{k}.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/subset.py"
