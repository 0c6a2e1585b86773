#!/usr/bin/env bash
# Check and unpack the real HARRISON release for scripts/reproduce_table1.sh --data DIR:
#   scripts/prepare_harrison.sh --tar HARRISON_full.tar --fixed HARRISON_fixed.zip --out DIR [--no-size-check]
# HARRISON_full.tar (6,067,998,720 bytes) comes from the authors' torrent, HARRISON_fixed.zip from their
# repository. Unpacks into DIR, puts the two re-issued images in place and checks that every image listed in
# data_list.txt exists and decodes; the ones that do not are listed in DIR/verify_report.tsv.
# A rerun skips what is done. Exit status 1 when some listed images are missing or damaged.
set -euo pipefail
if (($# == 0)) || [ "$1" = -h ] || [ "$1" = --help ]; then sed -n '2,7p' "$0"; exit 2; fi
exec "$(dirname "$0")/../.venv/bin/harrison" prepare-release "$@"
