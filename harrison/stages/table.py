"""``harrison table``: collect ``eval/*/metrics.json`` into ``results/table1.{md,csv,json}`` and print the Markdown.

It also writes ``results/manifest.json``: the run's provenance per model, gathered from the manifests the
stages left in the workdir (dataset, features, training, evaluation): engines, package versions, seeds,
input and output checksums and timings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harrison.config import add_config_arguments, config_from_args
from harrison.errors import HarrisonError
from harrison.files import read_json
from harrison.manifest import read_manifest, write_manifest
from harrison.proto.io import read_solver
from harrison.report.collect import not_comparable
from harrison.table import markdown_table1, write_table1

# What every stage's entry keeps of its manifest (besides what is particular to the stage).
COMMON_KEYS = ("created", "engine", "seconds", "versions", "settings", "inputs", "outputs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    eval_dir = config.workdir / "eval"
    metrics = sorted(eval_dir.glob("*/metrics.json"))
    results = {path.parent.name: read_json(path) for path in metrics}
    if not results:
        raise HarrisonError(f"{eval_dir}: no metrics.json; run harrison evaluate first")
    out = config.workdir / "results"
    note = not_comparable(config.workdir)
    paths = write_table1(results, out, note=note)
    provenance = {model: model_provenance(config.workdir, model) for model in results}
    paths.append(write_manifest(out, "table", inputs=metrics, outputs=paths,
                                extra={"workdir": str(config.workdir), "config": str(config.path), "models": provenance}))
    print(markdown_table1(results, note=note), end="")
    print("written: " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


def model_provenance(workdir: Path, model: str) -> dict[str, Any]:
    """Per stage that made ``model``'s row (dataset, features, train, evaluate): what its manifest records.

    A stage whose manifest is missing (its outputs came from elsewhere) is ``None``.
    """
    dataset = read_manifest(workdir / "dataset")
    data = read_manifest(workdir / "models" / model / "data")
    train = read_manifest(workdir / "models" / model)
    evaluate = read_manifest(workdir / "eval" / model)
    features = list(data["settings"].get("features", [])) if data else []
    solver = workdir / "models" / model / "solver.prototxt"
    return {
        "dataset": None if dataset is None else {
            **_common(workdir / "dataset", dataset),
            "seed": dataset.get("seed"), "counts": dataset.get("counts"), "config": dataset.get("config"),
        },
        "features": {feature: _features(workdir / "features" / feature) for feature in features},
        "train": None if train is None else {
            **_common(workdir / "models" / model, train),
            "status": train.get("status"), "iterations": train.get("iterations"),
            "random_seed": int(read_solver(solver).random_seed) if solver.exists() else None,
            "solver": str(solver),
        },
        "evaluate": None if evaluate is None else _common(workdir / "eval" / model, evaluate),
    }


def _features(folder: Path) -> dict[str, Any] | None:
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    return {**_common(folder, manifest), "splits": manifest.get("splits", {})}


def _common(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    return {"manifest": str(folder / "manifest.json"), **{key: manifest[key] for key in COMMON_KEYS if key in manifest}}
