#!/usr/bin/env bash
# Installs logivote itself into the active environment: every `<env>.post-deploy.sh` here runs this.
# Snakemake runs a post-deploy script inside the conda environment it has just created
# (--software-deployment-method conda), and every rule script imports logivote. The install is
# editable, so each rule runs the package of the checkout it was started from (the same commit as the
# rule files), also after later edits, without recreating the environment. --no-deps: the environment
# file pins what the rules of that environment need; logivote's core dependencies (Snakemake itself
# among them) stay in the environment that runs `snakemake`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python -m pip install --no-deps --no-input --quiet --editable "$repo"
python -c "import logivote, sys; print(f'logivote {logivote.__version__} from {logivote.__file__} in {sys.prefix}')"
