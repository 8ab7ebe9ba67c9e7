#!/usr/bin/env bash
# Snakemake runs this after creating this environment: install logivote (editable) into it.
exec bash "$(dirname "${BASH_SOURCE[0]}")/install-logivote.sh"
