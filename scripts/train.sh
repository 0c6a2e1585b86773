#!/usr/bin/env bash
# harrison train with the given arguments; with none, for every model of configs/demo.yaml.
# Examples: scripts/train.sh --config configs/harrison.yaml --model object_scene --engine caffe
set -euo pipefail
exec "$(dirname "$0")/../.venv/bin/harrison" train "$@"
