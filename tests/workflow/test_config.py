from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from ..conftest import REPO, run_snakemake


def job_counts(stdout: str) -> dict[str, str]:
    rows = (line.split() for line in stdout.split("Job stats:")[1].split("total")[0].splitlines())
    return {row[0]: row[1] for row in rows if len(row) == 2 and row[1].isdigit()}


def test_dry_run_shows_the_dag(workflow_copy: Path) -> None:
    result = run_snakemake(workflow_copy, "-n")
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout) == {
        "flatten": "1", "dev_split": "1", "subset": "21", "base_model": "1", "train_lora": "2", "link_adapter": "21", "loss_curves": "1",
        "predict": "1", "link_prediction": "21", "serving_record": "1", "vote": "1", "revote": "1", "submission": "1", "evaluate": "1",
        "plots": "1", "all": "1",
    }


def test_serve_shards_split_the_predict_phase_by_adapter(workflow_copy: Path) -> None:
    """serve.shards: 2 is two predict jobs, each with its own server and its share of the 21 adapters (11 and 10)."""
    result = run_snakemake(workflow_copy, "-n", "--configfile", ".test/shards2.yaml")
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout)["predict"] == "2" and job_counts(result.stdout)["link_prediction"] == "21"
    inputs = re.findall(r"^rule predict:\n    input: (.*)$", result.stdout, re.M)
    adapters = sorted(sorted(int(k) for k in re.findall(r"results/adapters/(\d+)", job)) for job in inputs)
    assert adapters == [list(range(11)), list(range(11, 21))]
    assert sorted(re.findall(r"output: (results/predict_shards/\d+)", result.stdout)) == ["results/predict_shards/0", "results/predict_shards/1"]
    (workflow_copy / "many.yaml").write_text("serve: {shards: 22}\n")
    too_many = run_snakemake(workflow_copy, "-n", "--configfile", "many.yaml")
    assert too_many.returncode != 0 and "serve.shards is 22: it must be between 1 and bagging.n_subsets (21)" in too_many.stderr + too_many.stdout


def test_evaluation_off_leaves_no_evaluation_job(workflow_copy: Path) -> None:
    (workflow_copy / "off.yaml").write_text("evaluation: {enabled: false}\n")
    result = run_snakemake(workflow_copy, "-n", "--configfile", "off.yaml")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert not {"dev_split", "evaluate", "plots"} & counts.keys(), counts
    assert "results/eval/" not in result.stdout and "results/data/pool.jsonl" not in result.stdout


def test_evaluation_is_reachable_by_name(workflow_copy: Path) -> None:
    result = run_snakemake(workflow_copy, "evaluate", "-n")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["evaluate"] == "1" and "plots" not in counts and "submission" not in counts


@pytest.mark.parametrize("k, jobs", [(1, 21), (3, 7), (7, 3), (8, 3), (21, 1), (30, 1)])
def test_training_jobs_are_ceil_of_adapters_over_k(workflow_copy: Path, k: int, jobs: int) -> None:
    (workflow_copy / "k.yaml").write_text(f"train: {{adapters_per_job: {k}}}\n")
    result = run_snakemake(workflow_copy, "-n", "--configfile", "k.yaml")
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout)["train_lora"] == str(jobs)


def test_one_adapter_by_name_runs_the_job_that_holds_it(workflow_copy: Path) -> None:
    (workflow_copy / "k.yaml").write_text("train: {adapters_per_job: 3}\n")
    result = run_snakemake(workflow_copy, "results/adapters/5", "-n", "--configfile", "k.yaml")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train_lora"] == "1" and counts["link_adapter"] == "1"
    assert "output: results/train_jobs/1" in result.stdout  # adapters 3, 4, 5
    assert counts["subset"] == "3"


def test_recipe_config_dry_run_downloads_and_trains_on_two_gpus(workflow_copy: Path) -> None:
    competition = workflow_copy / "resources" / "competition"
    competition.mkdir(exist_ok=True)  # a user may keep the real files there
    shutil.copy(workflow_copy / "resources" / "data" / "sample_train.jsonl", competition / "round1_train_data.jsonl")
    shutil.copy(workflow_copy / "resources" / "data" / "sample_test.jsonl", competition / "round1_test_data.jsonl")
    result = run_snakemake(workflow_copy, "-n", "--configfile", "config/recipe.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert job_counts(result.stdout)["train_lora"] == "21"
    assert "output: resources/models/Qwen--Qwen2.5-32B-Instruct-GPTQ-Int4" in result.stdout
    train_jobs = result.stdout.split("rule train_lora:")[1:]
    assert len(train_jobs) == 21 and all("gpu=2" in job.split("[")[0] for job in train_jobs)


@pytest.mark.parametrize(
    "override, words",
    [
        ("bagging: {n_subsets: 21, fraktion: 0.8, base_seed: 1}\n", "fraktion"),
        ("bagging: {n_subsets: many, fraction: 0.8, base_seed: 1}\n", "n_subsets"),
        ("sourcez: []\n", "sourcez"),
    ],
)
def test_schema_stops_a_bad_config_naming_the_key(workflow_copy: Path, override: str, words: str) -> None:
    (workflow_copy / "bad.yaml").write_text(override)
    result = run_snakemake(workflow_copy, "-n", "--configfile", "bad.yaml")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert words in output
    assert "error validating config file" in output.lower()


def test_lint_is_clean(workflow_copy: Path) -> None:
    result = run_snakemake(workflow_copy, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


@pytest.mark.parametrize("config_file", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "config").glob("*.yaml")))
def test_every_config_section_builds_its_settings(config_file: str) -> None:
    """Each key the schema allows in a shipped config is one the code accepts (a dry run never builds these)."""
    import yaml

    from logivote.ensemble.voting import VoteSettings
    from logivote.serving.client import ClientSettings
    from logivote.serving.inference import ServeSettings
    from logivote.training.settings import TrainSettings

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for section, values in yaml.safe_load((REPO / config_file).read_text()).items():
        config[section] = {**config[section], **values} if isinstance(values, dict) else values
    from dataclasses import asdict

    from logivote.base.models import tiny_settings

    built = {"serve": asdict(ServeSettings(**config["serve"])), "client": asdict(ClientSettings(**config["client"])),
             "train": asdict(TrainSettings.from_config(config["train"])), "vote": asdict(VoteSettings(**config["vote"]))}
    for section, settings in built.items():  # every configured value reaches its field unchanged
        given = {k: v for k, v in config[section].items() if k in settings}
        assert given == {k: settings[k] for k in given}, section
        assert set(config[section]) - set(given) <= {"mem_mb"}, f"{section}: keys no settings field takes"
    tiny = config["base_model"].get("tiny")
    if tiny:  # the tiny base's keys split among pre-training, quantization and shape, each value where it belongs
        pretraining, quantize, shape = (asdict(part) for part in tiny_settings(tiny))
        model = {k: v for k, v in tiny.items() if k != "pretrain"}
        assert {k: (quantize | shape)[k] for k in model} == model
        assert {k: pretraining[k] for k in tiny.get("pretrain", {})} == tiny.get("pretrain", {})
