from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from logivote.bench import faults
from logivote.serving.guard import processes

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def copy_workflow(dest: Path) -> Path:
    """Copy the tracked workflow, its configs, sample data, envs and test configs (no results/) to ``dest``."""
    return faults.copy_workflow(dest, (*faults.WORKFLOW_FOLDERS, ".test"))


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    """A copy of the tracked workflow (no results/) in a temporary folder."""
    return copy_workflow(tmp_path / "clone")


# What the predict phase makes and everything downstream of it. A test that reruns predict in a finished run's folder
# removes them all: with the submission still there, Snakemake would not rerun predict for its missing outputs alone.
PREDICT_AND_AFTER = ("results/predict_shards", "results/predictions", "results/cache", "results/votes", "results/eval",
                     "results/submission.jsonl")


def remove(workdir: Path, *paths: str, must_exist: bool = False) -> None:
    """Remove these files and folders (relative to ``workdir``) of a run; ``must_exist``: each of them must be there."""
    for name in paths:
        path = workdir / name
        assert path.exists() or not must_exist, f"{name} is not in {workdir}"
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


# A whole default run took 165-240 s warm and 328-397 s cold on 2 cores (AVX-512 and AVX2 machines, issue 42); the cap
# leaves a slower machine three times the slowest, and says so when it is hit rather than timing out in silence.
RUN_CAP_S = float(os.environ.get("LOGIVOTE_RUN_CAP_S", "1200"))


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", "snakemake", "--cores", "2", *args],
            cwd=workdir, capture_output=True, text=True, timeout=RUN_CAP_S,
        )
    except subprocess.TimeoutExpired as err:
        tail = ((err.stdout or b"") + (err.stderr or b"")).decode(errors="replace")[-3000:]  # bytes, whatever text= says
        raise AssertionError(f"snakemake {' '.join(args)} in {workdir} hit the per-run cap of {RUN_CAP_S:.0f} s "
                             f"(LOGIVOTE_RUN_CAP_S; a cold 2-core run takes about 400 s): the machine is slower than "
                             f"the cap allows, or the run hangs. Its last output:\n{tail}") from err


def processes_in_group(pgid: int) -> list[int]:
    return [pid for pid, (_, group) in processes().items() if group == pgid]


def server_pids(workdir: Path, log: str = "predict/0") -> list[int]:
    text = (workdir / "logs" / f"{log}.log").read_text()
    return [int(pid) for pid in re.findall(r"started vLLM server pid (\d+)", text)]


# What each end-to-end run served on, shown at the end of every pytest run (CI's output says which branch ran)
RUN_NOTES: list[str] = []


def note_serving(workdir: Path, label: str) -> None:
    """Record the machine's ISA and the serving path a whole run took (``results/predictions/serving.json``)."""
    from logivote.bench.cold_run import cpu

    machine = cpu()
    record = workdir / "results" / "predictions" / "serving.json"
    served = json.loads(record.read_text()) if record.exists() else None
    how = f"{served['weights']} weights in {served['dtype']} on {served['kernels']} ({served['reason']})" if served else "no serving record"
    RUN_NOTES.append(f"{label}: {machine['cpu']}, {machine['isa']}{' + AMX' if machine['amx'] else ''}; served {how}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RUN_NOTES:
        terminalreporter.section("end-to-end runs: CPU and serving path")
        for line in RUN_NOTES:
            terminalreporter.write_line(line)


@dataclass(frozen=True)
class LocalRun:
    """The embedded default run locally (``snakemake --cores 2``) in a copy of the workflow."""

    workdir: Path
    result: subprocess.CompletedProcess[str]
    submission: bytes | None  # read at once: later tests may remove results from workdir
    final: dict[str, bytes]  # every final file (logivote.bench.faults.final_files), read at once: the AVX2 test rewrites the folder


def copy_of_run(run: LocalRun, dest: Path) -> Path:
    """A copy of a finished run's folder (results, logs, Snakemake's metadata) to change without touching the shared one."""
    assert run.result.returncode == 0, (run.result.stdout + run.result.stderr)[-3000:]
    shutil.copytree(run.workdir, dest, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    return dest


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> LocalRun:
    """One local run of the whole embedded default, shared by the end-to-end and the SLURM tests."""
    dest = copy_workflow(tmp_path_factory.mktemp("e2e") / "clone")
    started = time.monotonic()
    result = run_snakemake(dest)
    print(f"local run of the embedded default: {time.monotonic() - started:.0f} s")  # beside the SLURM run's figure
    note_serving(dest, f"default run ({time.monotonic() - started:.0f} s)")
    submission = dest / "results" / "submission.jsonl"
    return LocalRun(dest, result, submission.read_bytes() if submission.exists() else None, faults.final_files(dest / "results"))
