"""Benchmark on a host with two GPUs (not a test); writes into ``--out`` (default ``bench_out``).

(a) the workflow's ``train_lora`` rule for two adapters with ``gpu=1`` each under
    ``--resources gpu=2`` (``.test/gpu2.yaml``), nvidia-smi sampled every second to show both
    trainings on different GPUs at once;
(b) one training with ``gpus=2`` whose model (Qwen2.5-32B shape, 8 of 64 layers) spans both GPUs
    (:mod:`logivote.bench.train_gpu`).

    python -m logivote.bench.two_gpus [--out bench_out]   (in the repository root; needs snakemake)
"""

from __future__ import annotations

import argparse
import glob
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench_out")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpus.txt").write_text(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout)
    samplers = [
        subprocess.Popen(["nvidia-smi", f"--query-{what}", "--format=csv,noheader", "-l", "1"], stdout=open(out / name, "w"))
        for what, name in (("gpu=timestamp,index,utilization.gpu,memory.used", "smi_gpus.csv"),
                           ("compute-apps=timestamp,pid,gpu_uuid,used_memory", "smi_apps.csv"))
    ]
    summary = open(out / "summary.txt", "a", encoding="utf-8")
    start = time.monotonic()
    with open(out / "snakemake.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "snakemake", "results/adapters/0", "results/adapters/1", "--cores", "16",
                             "--resources", "gpu=2", "--configfile", ".test/gpu2.yaml"], stdout=log, stderr=subprocess.STDOUT).returncode
    summary.write(f"snakemake rc={rc} in {time.monotonic() - start:.0f} s\n")
    for sampler in samplers:
        sampler.terminate()
    for name in ("logs", "benchmarks"):
        if Path(name).exists():
            shutil.copytree(name, out / name, dirs_exist_ok=True)
    keys = ("CUDA_VISIBLE_DEVICES", "using GPU", "model placement", "training done")
    for path in sorted(glob.glob("logs/train_lora/*.log")):
        for line in Path(path).read_text(errors="replace").splitlines():
            if any(key in line for key in keys):
                summary.write(line[:300] + "\n")
    with open(out / "split.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "logivote.bench.train_gpu", "--out", str(out / "split.jsonl"), "--gpus", "2",
                             "--cases", "qwen32b-8layers:1800:100"], stdout=log, stderr=subprocess.STDOUT).returncode
    summary.write(f"split rc={rc}\n")
    if (out / "split.jsonl").exists():
        summary.write((out / "split.jsonl").read_text())
    summary.close()
    print((out / "summary.txt").read_text())


if __name__ == "__main__":
    main()
