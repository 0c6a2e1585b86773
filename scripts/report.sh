#!/usr/bin/env bash
# Write the static HTML report of a run: <workdir>/results/report/index.html (+ PNGs), opens offline.
#   scripts/report.sh [--config configs/demo.yaml] [--workdir DIR] [--model object_scene] [--images 12] [--tags 20]
set -euo pipefail
exec "$(dirname "$0")/../.venv/bin/harrison" report "$@"
