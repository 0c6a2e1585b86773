"""Small training set-ups written into a test's tmp folder: HDF5 data, a classifier net and its solver.

The net follows the project's classifier (HDF5Data, InnerProduct + ReLU + Dropout, SigmoidCrossEntropyLoss)
at toy sizes, so both engines train it in well under a second per hundred iterations.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from harrison import caffelog
from harrison.proto import io as proto_io

NET = """name: "toy"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TRAIN }}
  hdf5_data_param {{ source: "{root}/train.txt" batch_size: {batch} }} }}
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TEST }}
  hdf5_data_param {{ source: "{root}/test.txt" batch_size: {batch} }} }}
layer {{ name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: {hidden} weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }}
layer {{ name: "drop1" type: "Dropout" bottom: "fc1" top: "fc1" dropout_param {{ dropout_ratio: {dropout} }} }}
layer {{ name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: {classes} weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "constant" value: 0 }} }} }}
layer {{ name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "fc2" bottom: "label" top: "loss" }}
layer {{ name: "prob" type: "Sigmoid" bottom: "fc2" top: "prob" include {{ phase: TEST }} }}
"""

DEPLOY = """name: "toy"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {batch} dim: {features} }} }} }}
layer {{ name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" inner_product_param {{ num_output: {hidden} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }}
layer {{ name: "drop1" type: "Dropout" bottom: "fc1" top: "fc1" dropout_param {{ dropout_ratio: {dropout} }} }}
layer {{ name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param {{ num_output: {classes} }} }}
layer {{ name: "prob" type: "Sigmoid" bottom: "fc2" top: "prob" }}
"""

FEATURES = 16

SOLVER_DEFAULTS = {
    "base_lr": 0.05,
    "lr_policy": '"step"',
    "gamma": 0.5,
    "stepsize": 100,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "display": 1,
    "max_iter": 200,
    "snapshot": 100,
    "test_interval": 50,
    "test_iter": 2,
    "random_seed": 7,
}


def write_data(root: Path, *, rows: int = 80, test_rows: int = 20, features: int = FEATURES, classes: int = 5, files: int = 2, seed: int = 0) -> None:
    """Train rows split over ``files`` HDF5 files and one test file, with source lists ``train.txt``, ``test.txt``."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((features, classes))

    def batch(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, features)).astype(np.float32)
        y = (x @ weights + 0.5 * rng.standard_normal((n, classes)) > 0.8).astype(np.float32)
        return x, y

    names = []
    for index, part in enumerate(np.array_split(np.arange(rows), files)):
        name = root / f"train_{index:03d}.h5"
        x, y = batch(len(part))
        with h5py.File(name, "w") as handle:
            handle["data"], handle["label"] = x, y
        names.append(str(name))
    (root / "train.txt").write_text("\n".join(names) + "\n")
    x, y = batch(test_rows)
    with h5py.File(root / "test_000.h5", "w") as handle:
        handle["data"], handle["label"] = x, y
    (root / "test.txt").write_text(f"{root / 'test_000.h5'}\n")


def write_setup(root: Path, *, batch: int = 10, hidden: int = 12, classes: int = 5, dropout: float = 0.0,
                snapshot_prefix: str = "snapshots/toy", **solver: object) -> Path:
    """Data, ``net.prototxt``, ``deploy.prototxt`` and ``solver.prototxt`` under ``root``; returns the solver path.

    ``solver`` overrides SOLVER_DEFAULTS (strings must carry their own quotes; a list gives a repeated field;
    None drops a default). The snapshot prefix is relative to ``root``.
    """
    root.mkdir(parents=True, exist_ok=True)
    write_data(root, classes=classes)
    (root / "net.prototxt").write_text(NET.format(root=root, batch=batch, hidden=hidden, classes=classes, dropout=dropout))
    (root / "deploy.prototxt").write_text(DEPLOY.format(batch=batch, features=FEATURES, hidden=hidden, classes=classes, dropout=dropout))
    fields = {**SOLVER_DEFAULTS, **solver}
    lines = [f'net: "{root / "net.prototxt"}"', f'snapshot_prefix: "{root / snapshot_prefix}"']
    for key, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                lines.append(f"{key}: {item}")
    (root / snapshot_prefix).parent.mkdir(parents=True, exist_ok=True)
    path = root / "solver.prototxt"
    path.write_text("\n".join(lines) + "\n")
    return path


def weights_of(path) -> dict[tuple[str, int], np.ndarray]:
    """Every blob of a .caffemodel by (layer, index)."""
    return {(name, i): blob for name, blobs in proto_io.layer_blobs(proto_io.read_caffemodel(path)).items()
            for i, blob in enumerate(blobs)}


def assert_weights_close(got, want, tolerance: float = 1e-4) -> None:
    """Normwise per blob: the largest difference over the largest reference value stays below ``tolerance``."""
    got, want = weights_of(got), weights_of(want)
    assert got.keys() == want.keys()
    for key, reference in want.items():
        error = np.abs(got[key] - reference).max() / np.abs(reference).max()
        assert error < tolerance, f"{key}: normwise error {error:.2e}"


def assert_losses_close(got: caffelog.TrainingLog, want: caffelog.TrainingLog, iterations, rel: float = 1e-4) -> None:
    """The same displayed iterations, each with the same (unsmoothed) loss within ``rel`` and the same lr."""
    got_rows = {row.iteration: row for row in got.train}
    want_rows = {row.iteration: row for row in want.train}
    assert sorted(got_rows) == sorted(want_rows) == list(iterations)
    for it in iterations:
        assert got_rows[it].raw_loss == pytest.approx(want_rows[it].raw_loss, rel=rel), f"iteration {it}"
        assert got_rows[it].lr == pytest.approx(want_rows[it].lr, rel=1e-6), f"iteration {it}"
