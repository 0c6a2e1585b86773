#!/usr/bin/env bash
# Set up everything harrison needs on a Debian or Ubuntu machine, from nothing; safe to rerun.
#   Debian packages: debootstrap, bubblewrap (real Caffe's root), wordnet-base, wordnet-sense-index
#                    (WordNet for NLTK, offline), chromium (the report's rendering test)
#   .venv/           the project's virtual environment (torch==2.13.0 unless HARRISON_TORCH_SPEC says otherwise)
#   .nltk_data/      WordNet for NLTK, built from Debian's files when NLTK has none
#   .caffe-root/     BVLC Caffe 1.0 in a Debian bullseye root (scripts/install_caffe.sh)
# Environment: HARRISON_SKIP_CAFFE=1 skips the Caffe root (the torch engine still works);
#              HARRISON_TORCH_SPEC picks the torch wheel (e.g. "torch" for a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }

apt_packages=(debootstrap bubblewrap wordnet-base wordnet-sense-index chromium)
missing=()
for package in "${apt_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "warning: no apt-get here; install ${missing[*]} yourself (see README)"
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.harrison-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) ${HARRISON_TORCH_SPEC:-torch==2.13.0}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "${HARRISON_TORCH_SPEC:-torch==2.13.0}"
  .venv/bin/python -m pip install -q -e ".[dev,torch]"
  echo "$want" > "$stamp"
fi

.venv/bin/python -m harrison.dataset.wordnet

if [ "${HARRISON_SKIP_CAFFE:-0}" != "1" ]; then
  bash scripts/install_caffe.sh
fi
say "ready: .venv/bin/harrison doctor shows what was found"
