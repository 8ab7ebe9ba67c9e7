from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

wildcard_constraints:
    k=r"\d+",


SUBSETS = list(range(config["bagging"]["n_subsets"]))


def source_paths():
    """Every configured raw file: the inputs of rule flatten."""
    return [source["path"] for source in config["sources"]]


def subset_files():
    return expand(
        ["results/subsets/{k}.jsonl", "results/subsets/{k}.oob.txt"], k=SUBSETS
    )


def all_input():
    return subset_files()
