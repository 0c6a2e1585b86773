#!/usr/bin/env bash
# harrison build-dataset with the given arguments (default: configs/demo.yaml, generating the demo data if missing).
# Examples: scripts/build_dataset.sh --config configs/harrison.yaml
#           scripts/build_dataset.sh --release ../shared/harrison-release --out runs/release/dataset
#           scripts/build_dataset.sh --crawl my_crawl.jsonl --image-root photos/ --out runs/mine/dataset --skip-bad
set -euo pipefail
exec "$(dirname "$0")/../.venv/bin/harrison" build-dataset "$@"
