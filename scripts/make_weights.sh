#!/usr/bin/env bash
# harrison make-weights with the given arguments: fill the demo feature nets with their fillers (.caffemodel).
# Examples: scripts/make_weights.sh --config configs/demo.yaml --engine caffe
set -euo pipefail
exec "$(dirname "$0")/../.venv/bin/harrison" make-weights "$@"
