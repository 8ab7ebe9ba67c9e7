from snakemake.utils import validate

from logivote.data.contracts import PLOTS
from logivote.serving.client import shard_cache
from logivote.serving.inference import shard_adapters
from logivote.base.models import model_dir
from logivote.training.job import job_adapters

validate(config, schema="../schemas/config.schema.yaml")


wildcard_constraints:
    k=r"\d+",
    job=r"\d+",
    shard=r"\d+",


N_SUBSETS = config["bagging"]["n_subsets"]
SUBSETS = list(range(N_SUBSETS))
# train.adapters_per_job adapters share one training job (one base model in memory): ceil(N / K) jobs
ADAPTERS_PER_JOB = config["train"].get("adapters_per_job", 1)


def job_of(k):
    """The training job that holds adapter k."""
    return k // ADAPTERS_PER_JOB


def job_subsets(wildcards):
    """The subsets of the adapters training job {job} holds."""
    return [
        f"results/subsets/{k}.jsonl"
        for k in job_adapters(int(wildcards.job), N_SUBSETS, ADAPTERS_PER_JOB)
    ]


def adapter_job_dir(wildcards):
    """The training job folder that holds adapter {k}."""
    return f"results/train_jobs/{job_of(int(wildcards.k))}"


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


def base_model_gpus():
    """The tiny base is quantized on a GPU with base_model.tiny.gpus: 1; nothing else in the rule needs one."""
    return (
        config["base_model"].get("tiny", {}).get("gpus", 0)
        if config["base_model"]["source"] == "tiny"
        else 0
    )


def adapter_dirs():
    return expand("results/adapters/{k}", k=SUBSETS)


ANSWER_CACHE = "results/cache/answers.jsonl"
# how the predict phase served the base: int4 or dequantized weights, and why (logivote.serving.serving_path)
SERVING_RECORD = "results/predictions/serving.json"


def prediction_files():
    return expand("results/predictions/{k}.jsonl", k=SUBSETS)


EVALUATION = config["evaluation"]["enabled"]


def eval_files(split):
    """Adapter k's out-of-bag ("oob") or dev answers with gold letters; none when evaluation is off."""
    return expand(f"results/eval/{split}/{{k}}.jsonl", k=SUBSETS) if EVALUATION else []


def bag_source():
    """What the bags are drawn from: the training questions less the dev puzzles (evaluation on), or all of them."""
    return "results/data/pool.jsonl" if EVALUATION else "results/data/train.jsonl"


# serve.shards predict jobs, each with its own server and a share of the adapters (logivote.serving.inference.shard_adapters)
SHARDS = config["serve"].get("shards", 1)
if not 1 <= SHARDS <= N_SUBSETS:
    raise ValueError(
        f"serve.shards is {SHARDS}: it must be between 1 and bagging.n_subsets ({N_SUBSETS})"
    )
SHARD_OF = {
    k: shard
    for shard in range(SHARDS)
    for k in shard_adapters(shard, N_SUBSETS, SHARDS)
}


def shard_subsets(wildcards):
    """The adapters predict shard {shard} asks."""
    return shard_adapters(int(wildcards.shard), N_SUBSETS, SHARDS)


def shard_adapter_dirs(wildcards):
    return [f"results/adapters/{k}" for k in shard_subsets(wildcards)]


def adapter_shard_dir(wildcards):
    """The predict shard folder that holds adapter {k}'s answers."""
    return f"results/predict_shards/{SHARD_OF[int(wildcards.k)]}"


def predict_eval_inputs(wildcards):
    """What predict shard {shard} reads to ask out-of-bag and dev questions too."""
    if not EVALUATION:
        return {}
    return {
        "pool": "results/data/pool.jsonl",
        "dev": "results/data/dev.jsonl",
        "oob": [f"results/subsets/{k}.oob.txt" for k in shard_subsets(wildcards)],
    }


def all_input():
    plots = expand("results/eval/plots/{name}.svg", name=list(PLOTS))
    return ["results/submission.jsonl", "results/plots/loss_curves.svg"] + (
        ["results/eval/metrics.json", *plots] if EVALUATION else []
    )
