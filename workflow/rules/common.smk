from snakemake.utils import validate

from logivote.models import model_dir


validate(config, schema="../schemas/config.schema.yaml")

wildcard_constraints:
    k=r"\d+",


SUBSETS = list(range(config["bagging"]["n_subsets"]))


def source_paths():
    """Every configured raw file: the inputs of rule flatten."""
    return [source["path"] for source in config["sources"]]


def env_file(name):
    """The conda environment file configured for a rule group (paths are relative to this folder)."""
    return f"../../{config['envs'][name]}"


BASE_MODEL_DIR = model_dir(config["base_model"])


def base_model_inputs():
    """The tiny model's tokenizer is trained on the flattened questions; downloads need no input."""
    if config["base_model"]["source"] == "tiny":
        return ["results/data/train.jsonl", "results/data/test.jsonl"]
    return []


def adapter_dirs():
    return expand("results/adapters/{k}", k=SUBSETS)


ANSWER_CACHE = "results/cache/answers.jsonl"


def prediction_files():
    return expand("results/predictions/{k}.jsonl", k=SUBSETS)


def all_input():
    return ["results/submission.jsonl"]
