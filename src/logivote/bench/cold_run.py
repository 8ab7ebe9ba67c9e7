"""Benchmark (not a test): the embedded default as a newcomer's first run meets it, cold, then warm (issue 42).

Each run is the default from an empty ``results/`` in a copy of the workflow (as :mod:`logivote.bench.seeds` runs
it). The first starts with every per-user cache empty, as on a fresh machine: a temporary ``HOME`` (gptqmodel's
JIT-built extensions, matplotlib's font list and Snakemake's caches live under it; ``XDG_CACHE_HOME`` and
``XDG_CONFIG_HOME`` beneath it) and fresh ``TORCHINDUCTOR_CACHE_DIR``, ``TRITON_CACHE_DIR`` and
``VLLM_CACHE_ROOT``. The second runs again from an empty ``results/`` with those caches as the first left them.
The operating system's file cache is not dropped (that needs root and touches the whole machine); the CPU's
model and ISA are printed with the figures.

It prints one JSON line per run (wall seconds, each rule's seconds from Snakemake's ``benchmarks/``) and appends
them to ``--out``:

    python -m logivote.bench.cold_run [--cores 2] [--out FILE] [--runs cold warm]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .seeds import REPO, rule_seconds

CACHE_VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "VLLM_CACHE_ROOT")


def cpu() -> dict[str, Any]:
    """The CPU's model name and the vector ISA that decides the serving path (``/proc/cpuinfo``)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"
    return {"cpu": model, "isa": isa, "amx": "amx_bf16" in flags, "cores": os.cpu_count()}


def fresh_caches(root: Path) -> dict[str, str]:
    """The environment of a machine that never ran anything: every per-user cache under ``root``, empty."""
    home = root / "home"
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config")}
    env.update({name: str(root / name.lower()) for name in CACHE_VARIABLES})
    for path in env.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    return env


def run_default(caches: dict[str, str], cores: int, label: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"logivote-{label}-") as scratch:
        work = Path(scratch)
        for name in ("workflow", "config", "resources", "envs"):
            shutil.copytree(REPO / name, work / name)
        env = {**os.environ, **caches}
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores)], check=False, cwd=work,
                                capture_output=True, text=True, env=env)
        wall = time.monotonic() - started
        if result.returncode:
            raise RuntimeError(f"{label} run failed:\n{(result.stdout + result.stderr)[-4000:]}")
        return {"run": label, "wall_s": round(wall, 1), "rules_s": rule_seconds(work)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--runs", nargs="+", default=["cold", "warm"], choices=["cold", "warm"],
                        help="cold: every per-user cache empty first; warm: the caches the previous run left (or this user's own)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    machine = cpu()
    with tempfile.TemporaryDirectory(prefix="logivote-caches-") as root:
        caches = fresh_caches(Path(root))
        for label in args.runs:
            row = {"bench": "cold_run", "tag": args.tag, **machine, **run_default(caches, args.cores, label)}
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as handle:
                    handle.write(line + "\n")


if __name__ == "__main__":
    main()
