#!/usr/bin/env bash
# Reproduce Table 1 of the HARRISON paper, end to end:
#   build dataset -> make demo weights -> extract fc7 (object, scene) -> train 3 classifiers -> evaluate -> table, report
#
#   scripts/reproduce_table1.sh                      the bundled demo data and demo nets (a few minutes on 2 cores)
#   scripts/reproduce_table1.sh --data DIR --object-weights VGG_ILSVRC_16_layers.caffemodel \
#       --scene-weights snapshot_iter_765280.caffemodel [--engine caffe|torch|auto] [--gpu N]
#                                                    the real release (DIR from scripts/prepare_harrison.sh)
# Other options: --config FILE (a config of your own), --workdir DIR (where the run goes).
# Stages whose outputs are complete and current are skipped, so a rerun after editing a solver
# redoes only training and evaluation. Results: <workdir>/results/ (table1.md/csv/json, report/index.html).
set -euo pipefail
here=$PWD
cd "$(dirname "$0")/.."
abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$here/$1" ;; esac; }  # paths as given, from the caller's folder

config=configs/demo.yaml data="" object_weights="" scene_weights="" workdir="" run_args=()
while (($#)); do
  case "$1" in
    --config) config=$(abs "$2"); shift 2 ;;
    --data) data=$(abs "$2"); shift 2 ;;
    --object-weights) object_weights=$(abs "$2"); shift 2 ;;
    --scene-weights) scene_weights=$(abs "$2"); shift 2 ;;
    --workdir) workdir=$(abs "$2"); shift 2 ;;
    --engine|--gpu) run_args+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "reproduce_table1.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

bash scripts/setup.sh >&2
harrison=.venv/bin/harrison

if [ -n "$data" ]; then
  [ -n "$object_weights" ] && [ -n "$scene_weights" ] || {
    echo "reproduce_table1.sh: --data needs --object-weights and --scene-weights (the VGG-16 ImageNet and Places205 .caffemodel files)" >&2
    exit 2
  }
  [ "$config" = configs/demo.yaml ] && config=configs/harrison.yaml
  workdir=${workdir:-runs/harrison}
  mkdir -p "$workdir"
  .venv/bin/python -m harrison.config "$config" "$workdir/config.yaml" \
    --set "workdir=$workdir" --set "dataset.release=$data" --set "dataset.image_root=$data" \
    --set "features.object.weights=$object_weights" --set "features.scene.weights=$scene_weights" >/dev/null
  config=$workdir/config.yaml
  workdir=""
fi
common=(--config "$config")
[ -n "$workdir" ] && common+=(--workdir "$workdir")

features=$(.venv/bin/python -c 'import sys, yaml; print(" ".join(yaml.safe_load(open(sys.argv[1]))["features"]))' "$config")
models=$(.venv/bin/python -c 'import sys, yaml; print(" ".join(yaml.safe_load(open(sys.argv[1]))["models"]))' "$config")

step() { printf '\n== %s\n' "$*" >&2; }
step "build the dataset";        $harrison build-dataset "${common[@]}"
step "feature-net weights";      $harrison make-weights "${common[@]}" "${run_args[@]}"
for feature in $features; do
  step "extract $feature fc7";   $harrison extract "${common[@]}" --feature "$feature" "${run_args[@]}"
done
for model in $models; do
  step "train $model";           $harrison train "${common[@]}" --model "$model" "${run_args[@]}"
  step "evaluate $model";        $harrison evaluate "${common[@]}" --model "$model" "${run_args[@]}"
done
step "Table 1";                  $harrison table "${common[@]}"
step "report";                   $harrison report "${common[@]}"

results=$(.venv/bin/python -c 'import sys; from harrison.config import load_config; print(load_config(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None).workdir / "results")' "$config" ${workdir:+"$workdir"})
cat >&2 <<DONE

Done. Table 1: $results/table1.md (also .csv, .json)
How each number was made (engines, versions, seeds, checksums, timings): $results/manifest.json
Report (open in a browser): $results/report/index.html
Hashtags for your own photos: .venv/bin/harrison recommend ${common[*]} PHOTO...
DONE
