#!/usr/bin/env bash
# Regenerate harrison/proto/caffe_pb2.py from harrison/proto/caffe.proto with grpcio-tools' protoc.
# Usage: scripts/gen_proto.sh [OUTDIR]   (OUTDIR defaults to the repository root; tests use a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
out="${1:-.}"
mkdir -p "$out"
"$python" -m grpc_tools.protoc -I . --python_out="$out" harrison/proto/caffe.proto
