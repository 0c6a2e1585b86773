#!/usr/bin/env bash
# harrison merge-features with the given arguments: join the shards written by `extract --shard K/N`.
# Examples: scripts/merge_features.sh --config runs/harrison/config.yaml
#           scripts/merge_features.sh --config runs/harrison/config.yaml --feature object --split train
set -euo pipefail
exec "$(dirname "$0")/../.venv/bin/harrison" merge-features "$@"
