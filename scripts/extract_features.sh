#!/usr/bin/env bash
# harrison extract with the given arguments; with none, for every feature and split of configs/demo.yaml.
# Examples: scripts/extract_features.sh --config configs/harrison.yaml --feature object --gpu 0 --shard 1/4
set -euo pipefail
exec "$(dirname "$0")/../.venv/bin/harrison" extract "$@"
