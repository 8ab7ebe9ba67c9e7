"""Disjoint GPUs for concurrent jobs.

Snakemake counts GPUs (``resources: gpu=N`` against ``--resources gpu=M``) but
does not say which ones a job may use. :func:`gpu_slots` picks ``n`` GPU
indices that no other running job holds, by taking an exclusive ``flock`` on
one lock file per GPU in a shared folder, and sets ``CUDA_VISIBLE_DEVICES`` to
them. The locks go away with the process, also when it is killed, so a crash
never leaks a GPU. Under SLURM (``SLURM_JOB_ID`` set) the scheduler already
gave the job its own devices: exactly ``n`` of them are kept as they are, fewer
fail the job rather than let it use GPUs it was not given, and more (several
jobs sharing one allocation) are shared out by the same locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_LOCK_DIR = ".snakemake/gpu-locks"


def no_fp8(index: int = 0) -> str | None:
    """Why CUDA device ``index`` has no FP8 tensor cores (compute capability under 8.9: V100, A100); None where it has them."""
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < (8, 9):
        return f"{torch.cuda.get_device_name(index)} (compute capability {major}.{minor}) has no FP8 tensor cores"
    return None


def count_gpus() -> int:
    """GPUs on this host by ``nvidia-smi -L`` (0 without it)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _host_devices(total: int | None) -> list[str]:
    """The pool to choose from: ``total`` fake GPUs, else ``CUDA_VISIBLE_DEVICES`` if set, else every GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and total is None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(count_gpus() if total is None else total)]


@contextlib.contextmanager
def gpu_slots(
    n: int,
    total: int | None = None,
    lock_dir: str | os.PathLike[str] = DEFAULT_LOCK_DIR,
    timeout: float = 3600.0,
    poll: float = 0.5,
) -> Iterator[list[str]]:
    """Hold ``n`` GPUs no other job holds; set ``CUDA_VISIBLE_DEVICES`` meanwhile.

    ``total`` overrides the detected device count (tests use it to fake GPUs).
    ``n == 0`` hides every GPU. Waits up to ``timeout`` seconds for free GPUs.
    """
    if n == 0:
        with _visible("") as devices:
            yield devices
        return
    slurm_job = os.environ.get("SLURM_JOB_ID")
    if slurm_job and total is None:
        granted = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if len(granted) < n:
            raise RuntimeError(
                f"SLURM job {slurm_job} needs {n} GPU(s) but SLURM gave it {len(granted)} "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): submit it with --gpus={n} "
                "(workflow/profiles/slurm maps the rule's gpu= resource to it)")
        if len(granted) == n:
            log.info("SLURM job %s: keeping CUDA_VISIBLE_DEVICES=%s", slurm_job, ",".join(granted))
            yield granted
            return
        # more than this job needs: one allocation shared by several jobs (Snakemake run locally inside
        # salloc); take n of the granted GPUs by lock, like on a host of our own
    devices = _host_devices(total)
    if n > len(devices):
        raise RuntimeError(f"job needs {n} GPU(s) but this host has {len(devices)}")
    folder = Path(lock_dir)
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    held: list[tuple[str, int]] = []
    try:
        while True:
            for device in devices:
                if len(held) == n:
                    break
                fd = os.open(folder / f"gpu{device}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                held.append((device, fd))
            if len(held) == n:
                break
            for _, fd in held:  # give partial holdings back so two jobs cannot deadlock
                os.close(fd)
            held = []
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {n} free GPU(s) of {len(devices)} within {timeout:.0f} s (locks in {folder})")
            time.sleep(poll)
        chosen = [device for device, _ in held]
        log.info("using GPU(s) %s", ",".join(chosen))
        with _visible(",".join(chosen)):
            yield chosen
    finally:
        for _, fd in held:
            os.close(fd)


@contextlib.contextmanager
def _visible(value: str) -> Iterator[list[str]]:
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = value
    try:
        yield [d for d in value.split(",") if d]
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old
