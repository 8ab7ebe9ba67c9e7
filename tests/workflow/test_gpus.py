"""GPU slot assignment, on CPU with fake GPU counts (no CUDA needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from logivote.gpus import gpu_slots

HOLDER = textwrap.dedent("""
    import os, sys, time
    from logivote.gpus import gpu_slots
    n, total, lock_dir, hold, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
    with gpu_slots(n, total=total, lock_dir=lock_dir, poll=0.05):
        start = time.time()
        time.sleep(hold)
        with open(out, "w") as f:
            f.write(f"{os.environ['CUDA_VISIBLE_DEVICES']} {start} {time.time()}")
""")


def holders(tmp_path: Path, jobs: list[tuple[int, int]], hold: float) -> list[tuple[set[str], float, float]]:
    procs = []
    for i, (n, total) in enumerate(jobs):
        out = tmp_path / f"job{i}.txt"
        procs.append((subprocess.Popen([sys.executable, "-c", HOLDER, str(n), str(total), str(tmp_path / "locks"), str(hold), str(out)]), out))
    results = []
    for proc, out in procs:
        assert proc.wait(timeout=60) == 0
        devices, start, end = out.read_text().split()
        results.append((set(devices.split(",")), float(start), float(end)))
    return results


def overlap(a: tuple[set[str], float, float], b: tuple[set[str], float, float]) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def test_two_one_gpu_jobs_run_side_by_side_on_different_gpus(tmp_path: Path) -> None:
    a, b = holders(tmp_path, [(1, 2), (1, 2)], hold=1.5)
    assert overlap(a, b)
    assert a[0] | b[0] == {"0", "1"} and not a[0] & b[0]


def test_a_third_job_waits_for_a_free_gpu(tmp_path: Path) -> None:
    results = holders(tmp_path, [(1, 2), (1, 2), (1, 2)], hold=1.0)
    for i, first in enumerate(results):
        for second in results[i + 1:]:
            if overlap(first, second):
                assert not first[0] & second[0], "two concurrent jobs shared a GPU"
    assert not all(overlap(x, y) for i, x in enumerate(results) for y in results[i + 1:])  # never three at once (1-D Helly)


def test_two_gpu_jobs_take_both_and_run_one_at_a_time(tmp_path: Path) -> None:
    a, b = holders(tmp_path, [(2, 2), (2, 2)], hold=0.8)
    assert a[0] == b[0] == {"0", "1"}
    assert not overlap(a, b)


def test_a_killed_job_frees_its_gpu(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, "2", "2", str(tmp_path / "locks"), "60", str(tmp_path / "never.txt")])
    deadline = time.time() + 30
    while not (tmp_path / "locks" / "gpu1.lock").exists():
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    with pytest.raises(TimeoutError):
        with gpu_slots(1, total=2, lock_dir=tmp_path / "locks", timeout=0.3, poll=0.05):
            pass
    proc.kill()
    proc.wait()
    with gpu_slots(2, total=2, lock_dir=tmp_path / "locks", timeout=5) as devices:
        assert devices == ["0", "1"]


def test_zero_gpus_hides_all_and_restores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,4")
    with gpu_slots(0, lock_dir=tmp_path) as devices:
        assert devices == [] and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,4"


def test_visible_devices_are_the_pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with gpu_slots(2, lock_dir=tmp_path) as devices:
        assert devices == ["5", "7"] and os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"


def test_more_gpus_than_the_host_has(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="needs 3 GPU"):
        with gpu_slots(3, total=2, lock_dir=tmp_path):
            pass


def test_slurm_job_keeps_the_gpus_slurm_gave_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with gpu_slots(1, lock_dir=tmp_path) as devices:
        assert devices == ["1"] and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert not list(tmp_path.iterdir()), "no lock files: SLURM owns the GPUs"


@pytest.mark.parametrize("visible", [None, "", "0"])
def test_slurm_job_without_the_gpus_it_needs_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, visible: str | None) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(RuntimeError, match=r"SLURM job 42 needs 2 GPU\(s\).*--gpus=2"):
        with gpu_slots(2, lock_dir=tmp_path):
            pass


def test_jobs_sharing_one_slurm_allocation_split_its_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Snakemake run locally inside `salloc --gpus=2`: two 1-GPU jobs take one granted GPU each."""
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,4")
    with gpu_slots(1, lock_dir=tmp_path) as first:
        os.environ["CUDA_VISIBLE_DEVICES"] = "3,4"  # the second job is another process: it sees the allocation's GPUs
        with gpu_slots(1, lock_dir=tmp_path, timeout=0) as second:
            assert sorted(first + second) == ["3", "4"]
