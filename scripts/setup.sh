#!/usr/bin/env bash
# Set up everything harrison needs on a Debian or Ubuntu machine, from nothing; safe to rerun.
#   Debian packages: debootstrap, bubblewrap (real Caffe's root), wordnet-base, wordnet-sense-index
#                    (WordNet for NLTK, offline), python3-venv where Python lacks it, and chromium
#                    (chromium-browser on Ubuntu; only the report's rendering test needs it)
#   .venv/           the project's virtual environment (torch==2.13.0 unless HARRISON_TORCH_SPEC says otherwise)
#   .nltk_data/      WordNet for NLTK, built from Debian's files when NLTK has none
#   .caffe-root/     BVLC Caffe 1.0 in a Debian bullseye root (scripts/install_caffe.sh)
# Environment: HARRISON_SKIP_CAFFE=1 skips the Caffe root (the torch engine still works);
#              HARRISON_TORCH_SPEC picks the torch wheel (e.g. "torch" for a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }

python=${PYTHON:-python3}
apt_packages=(debootstrap bubblewrap wordnet-base wordnet-sense-index)
"$python" -c 'import ensurepip' >/dev/null 2>&1 || apt_packages+=(python3-venv)  # Debian and Ubuntu split venv off
missing=()
for package in "${apt_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
browser_missing=0
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || browser_missing=1
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
if ((${#missing[@]} + browser_missing)); then
  if command -v apt-get >/dev/null 2>&1; then
    $sudo apt-get update -qq
    if ((${#missing[@]})); then
      say "installing Debian packages: ${missing[*]}"
      apt_install "${missing[@]}"
    fi
    if ((browser_missing)); then  # only the report's rendering test needs it; Debian says chromium, Ubuntu chromium-browser
      say "installing a headless browser for the report's rendering test"
      apt_install chromium 2>/dev/null || apt_install chromium-browser 2>/dev/null ||
        say "warning: could not install chromium; the report's rendering test will not run"
    fi
  else
    say "warning: no apt-get here; install ${missing[*]} and chromium yourself (see README)"
  fi
fi

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
