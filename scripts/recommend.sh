#!/usr/bin/env bash
# Top-K hashtags for your own photos from a trained classifier of a run:
#   scripts/recommend.sh PHOTO... [-k 5] [--config configs/demo.yaml] [--workdir DIR] [--model object_scene | --model runs/NAME/models/MODEL]
#                        [--engine caffe|torch|auto] [--gpu N] [--json]
# Exit status 1 when some photo could not be read (the others are still answered).
set -euo pipefail
exec "$(dirname "$0")/../.venv/bin/harrison" recommend "$@"
