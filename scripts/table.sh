#!/usr/bin/env bash
# harrison table with the given arguments: collect the evaluated models into <workdir>/results/table1.{md,csv,json}.
# Examples: scripts/table.sh --config runs/harrison/config.yaml
set -euo pipefail
exec "$(dirname "$0")/../.venv/bin/harrison" table "$@"
