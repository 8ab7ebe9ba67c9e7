"""Benchmark (not a test): one config's adapters trained twice from the same seed, frozen GEMMs in bf16 and in FP8 (issue 41).

The workflow's own :func:`logivote.training.loop.train_adapters` trains every subset of ``--subsets`` (``0.jsonl``,
``1.jsonl``, ...) in one job with the config's ``train`` section, once with ``frozen_gemm: bf16`` and once with
``fp8``, into ``--out-dir/bf16`` and ``--out-dir/fp8``; it prints one JSON line: each run's wall time, the largest
relative difference between the two runs' loss curves (``loss_curve.tsv``, per adapter and logged step) and the
mean final loss of each. Serve the two sets with ``python -m logivote.bench.fp8_serving --adapters-b`` for their
dev accuracy and the letters that agree.

    python -m logivote.bench.fp8_train --config config/gpu-small.yaml --base results/base_model/tiny \\
        --subsets results/subsets --out-dir /tmp/gs --out fp8_train.jsonl
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import yaml

from logivote.bench import report


def main(argv: list[str] | None = None) -> None:
    import torch

    from logivote.data.contracts import LOSS_CURVE, read_loss_curve
    from logivote.training.loop import train_adapters
    from logivote.training.settings import TrainSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--subsets", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    section = yaml.safe_load(Path(args.config).read_text())["train"]
    subsets = {int(p.stem): p for p in Path(args.subsets).glob("*.jsonl") if p.stem.isdigit()}
    result: dict[str, object] = {"bench": "fp8_train", "tag": args.tag, "config": args.config, "adapters": len(subsets),
                                 "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    curves: dict[str, dict[tuple[int, int], float]] = {}
    for gemm in ("bf16", "fp8"):
        settings = replace(TrainSettings.from_config(section), frozen_gemm=gemm, gpus=1)
        out = Path(args.out_dir) / gemm
        started = time.monotonic()
        train_adapters(args.base, subsets, {k: out / str(k) for k in subsets}, out / "checkpoints", settings)
        result[f"{gemm}_train_s"] = round(time.monotonic() - started, 1)
        curves[gemm] = {(int(r["adapter"]), int(r["step"])): r["loss"] for k in subsets for r in read_loss_curve(out / str(k) / LOSS_CURVE)}
    a, b = curves["bf16"], curves["fp8"]
    result["loss_curve_max_rel_diff"] = max(abs(b[key] - a[key]) / abs(a[key]) for key in a)
    result["loss_curve_mean_rel_diff"] = sum(abs(b[key] - a[key]) / abs(a[key]) for key in a) / len(a)
    last = {g: [c[max(key for key in c if key[0] == k)] for k in subsets] for g, c in curves.items()}
    result.update({f"{g}_final_loss_mean": sum(v) / len(v) for g, v in last.items()})
    report(result, args.out)


if __name__ == "__main__":
    main()
