#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, real-Caffe tests included.
# Extra arguments go to pytest, e.g. scripts/test.sh -k metrics
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -ra --durations=15 "$@"
