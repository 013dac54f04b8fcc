#!/usr/bin/env bash
# Run by Snakemake inside the freshly created conda env (from the workflow's working directory, the
# repository root): install the lop package itself, without touching the env's dependencies.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation -e .
