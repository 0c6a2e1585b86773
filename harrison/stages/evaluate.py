"""``harrison evaluate``: score the test split with a trained classifier and compute P@1, R@K, A@K.

For each model (``--model`` picks one) the materialised deploy net with the final snapshot runs over
``models/<model>/data/test_NNN.h5`` in batches; the scores go to ``eval/<model>/scores.h5`` (``scores``
N x C, ``image``), the figures to ``metrics.json`` (fractions, through ``harrison.metrics.evaluate``) and the
model's Table 1 row is printed. Skipped when its manifest is current.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from harrison.classifier_data import input_blob, model_folder, output_layer, score_blob
from harrison.config import Config, add_config_arguments, config_from_args
from harrison.engines import ENGINE_CHOICES, get_engine
from harrison.errors import HarrisonError
from harrison.features import STRING
from harrison.files import atomic_path, read_json, write_json
from harrison.manifest import is_current, read_manifest, write_manifest
from harrison.metrics import evaluate
from harrison.proto.io import layer_blobs, read_caffemodel, read_net
from harrison.stages.train import final_weights, models_of
from harrison.table import table1

BATCH_SIZE = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", help="one model of the config (default: all of them)")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto", help="which engine runs the deploy net (default: auto)")
    parser.add_argument("--gpu", type=int, default=None, help="GPU id (default: CPU)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"rows per forward pass (default: {BATCH_SIZE})")


def trained(config: Config, model: str) -> tuple[Path, Path, list[Path]]:
    """The deploy copy, final weights and test data files of a trained model, or an error saying to train it."""
    folder = model_folder(config, model)
    manifest = read_manifest(folder)
    deploy, solver = folder / "deploy.prototxt", folder / "solver.prototxt"
    if manifest is None or manifest.get("status") != "done" or not solver.exists():
        raise HarrisonError(f"{folder}: not trained; run harrison train --model {model} first")
    weights = final_weights(solver)
    if not weights.exists():
        raise HarrisonError(f"{weights}: missing; run harrison train --model {model} again")
    tests = [Path(line) for line in (folder / "data" / "test.txt").read_text(encoding="utf-8").split()]
    return deploy, weights, tests


def check_weights(deploy: Path, weights: Path, num_classes: int, width: int) -> None:
    """The snapshot's output layer must have one unit per class and take ``width`` inputs at the first layer."""
    net = read_net(deploy)
    out = output_layer(net, deploy)
    blobs = layer_blobs(read_caffemodel(weights))
    if out.name not in blobs:
        raise HarrisonError(f"{weights} has no weights for layer {out.name!r} of {deploy}; retrain the model")
    outputs = int(np.prod(blobs[out.name][0].shape[:-1]))
    if outputs != num_classes:
        raise HarrisonError(f"{weights} has {outputs} outputs in layer {out.name!r} but the dataset has {num_classes} "
                            "classes; retrain the model on this dataset")
    first = next(layer for layer in net.layer if layer.type == "InnerProduct")
    if first.name in blobs and blobs[first.name][0].shape[-1] != width:
        raise HarrisonError(f"{weights} expects {blobs[first.name][0].shape[-1]}-d inputs at layer {first.name!r} "
                            f"but the features are {width}-d; retrain the model on these features")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    k = int(config.section("evaluate", "k"))
    engine = None
    for model in models_of(config, args.model):
        deploy, weights, tests = trained(config, model)
        out_dir = config.workdir / "eval" / model
        settings = {"model": model, "k": k}
        if is_current(out_dir, inputs=[deploy, weights, *tests], settings=settings):
            metrics = read_json(out_dir / "metrics.json")
            print(f"{out_dir}: up to date, skipped", file=sys.stderr)
        else:
            with h5py.File(tests[0], "r") as handle:
                num_classes, width = handle["label"].shape[1], handle["data"].shape[1]
            check_weights(deploy, weights, num_classes, width)
            if engine is None:
                engine, reason = get_engine(args.engine, args.gpu)
                print(f"engine: {engine.name} ({reason})", file=sys.stderr)
            net = read_net(deploy)
            began = time.time()
            scores, truth, images = _score(engine, deploy, weights, tests, input_blob(net, deploy), score_blob(net, deploy), args.batch_size)
            metrics = {"model": model, "k": k, "images": len(images), "engine": engine.name, **evaluate(scores, truth, k)}
            with atomic_path(out_dir / "scores.h5", suffix=".h5") as tmp, h5py.File(tmp, "w") as handle:
                handle.create_dataset("scores", data=scores)
                handle.create_dataset("image", data=np.array(images, dtype=object), dtype=STRING)
            write_json(out_dir / "metrics.json", metrics)
            write_manifest(out_dir, "evaluate", inputs=[deploy, weights, *tests],
                           outputs=[out_dir / "scores.h5", out_dir / "metrics.json"], settings=settings,
                           extra={"engine": engine.manifest_entry(), "seconds": round(time.time() - began, 1)})
        print(table_row(model, metrics))
    return 0


def _score(engine, deploy: Path, weights: Path, tests: list[Path], blob_in: str, blob_out: str,
           batch_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    scores, truth, images = [], [], []
    with engine.load_net(deploy, weights) as runner:
        for path in tests:
            with h5py.File(path, "r") as handle:
                data = handle["data"]
                for first in range(0, data.shape[0], batch_size):
                    batch = data[first : first + batch_size]
                    scores.append(np.asarray(runner.forward({blob_in: batch}, [blob_out])[blob_out], dtype=np.float32).reshape(len(batch), -1))
                truth.append(handle["label"][:] > 0.5)
                images += [name.decode("utf-8") for name in handle["image"][:]]
    return np.concatenate(scores), np.concatenate(truth), images


def table_row(model: str, metrics: dict) -> str:
    """The model's Table 1 row as Markdown: ours / paper per column, in percent."""
    table = table1({model: metrics})
    row = table["rows"].get(model)
    if row is None:
        cells = [f"{100 * metrics[c]:.2f}" for c in metrics if "@" in c]
        return f"| {model} | " + " | ".join(cells) + " |"
    cells = [f"{cell['ours']:.2f} (paper {cell['paper']:.2f})" for cell in row["metrics"].values() if cell["ours"] is not None]
    return f"| {row['label']} | " + " | ".join(cells) + " |"
