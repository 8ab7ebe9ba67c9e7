#!/usr/bin/env bash
# Benchmark on a host with two GPUs (not a test). Needs snakemake importable (on an offline GPU
# machine: pip install --no-index --find-links <wheels> snakemake) and writes into ${OUT:-bench_out}.
# (a) the workflow's train_lora rule for two adapters with gpu=1 each under --resources gpu=2:
#     nvidia-smi is sampled every second to show both trainings on different GPUs at once;
# (b) one training with gpu=2 whose model (Qwen2.5-32B shape, 8 of 64 layers) spans both GPUs.
set -uo pipefail
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L > "$OUT/gpus.txt"
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader -l 1 > "$OUT/smi_gpus.csv" &
smi_gpus=$!
nvidia-smi --query-compute-apps=timestamp,pid,gpu_uuid,used_memory --format=csv,noheader -l 1 > "$OUT/smi_apps.csv" &
smi_apps=$!
start=$(date +%s)
python3 -m snakemake results/adapters/0 results/adapters/1 --cores 16 --resources gpu=2 \
  --configfile .test/gpu2.yaml > "$OUT/snakemake.log" 2>&1
echo "snakemake rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
kill $smi_gpus $smi_apps
cp -r logs benchmarks "$OUT/" 2>/dev/null
grep -h -E "CUDA_VISIBLE_DEVICES|using GPU|model placement|training done" logs/train_lora/*.log | cut -c1-300 | tee -a "$OUT/summary.txt"
python3 workflow/scripts/bench_train_gpu.py --out "$OUT/split.jsonl" --gpus 2 --cases qwen32b-8layers:1800:100 \
  > "$OUT/split.log" 2>&1
echo "split rc=$?" | tee -a "$OUT/summary.txt"
cat "$OUT/split.jsonl" | tee -a "$OUT/summary.txt"
