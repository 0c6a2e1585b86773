"""The demo chain gives the same Table 1 with either engine when both start from the same files: the same
feature-net weights, dataset, initial classifier weights (`harrison train --weights`) and solvers (dropout off,
since the engines draw different masks)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from harrison.classifier_data import build_data, materialise
from harrison.cli import main
from harrison.config import PROJECT_ROOT, load_config
from harrison.caffelog import parse_log
from harrison.proto.io import read_net, read_solver, write_prototxt
from test_recommend import small_config

pytestmark = pytest.mark.slow

MODELS = ("object", "scene", "object_scene")
TEST_SIZE = 60
SOLVERS = PROJECT_ROOT / "prototxt" / "demo" / "classifier"


def solver_without_dropout(folder: Path, model: str) -> Path:
    """The demo solver of ``model`` and its net with every Dropout ratio set to 0; all other numbers as in prototxt/."""
    source = SOLVERS / f"solver_{model}.prototxt"
    solver = read_solver(source)
    net = read_net(source.parent / solver.net)
    dropouts = [layer for layer in net.layer if layer.type == "Dropout"]
    assert dropouts
    for layer in dropouts:
        layer.dropout_param.dropout_ratio = 0.0
    solver.net = str(write_prototxt(folder / f"train_test_{model}.prototxt", net))
    return write_prototxt(folder / f"solver_{model}.prototxt", solver)


def run(config: Path, workdir: Path, engine: str, inits: dict[str, Path]) -> None:
    common = ["--config", str(config), "--workdir", str(workdir), "--engine", engine]
    assert main(["extract", *common]) == 0, f"extract with {engine}"
    for model, init in inits.items():
        for stage in (["train", "--model", model, "--weights", str(init)], ["evaluate", "--model", model]):
            assert main([*stage, *common]) == 0, f"{stage} with {engine}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, caffe_engine):
    folder = tmp_path_factory.mktemp("agree")
    config = small_config(folder, posts=300, test_size=TEST_SIZE,
                          **{f"models.{model}.solver": str(solver_without_dropout(folder, model)) for model in MODELS})
    caffe_run, torch_run = folder / "caffe", folder / "torch"
    assert main(["build-dataset", "--config", str(config), "--workdir", str(caffe_run)]) == 0
    assert main(["make-weights", "--config", str(config), "--workdir", str(caffe_run), "--engine", "caffe"]) == 0
    assert main(["extract", "--config", str(config), "--workdir", str(caffe_run), "--engine", "caffe"]) == 0
    loaded = load_config(config, caffe_run)
    inits = {model: caffe_engine.init_weights(materialise(loaded, model, build_data(loaded, model))["deploy"],
                                              folder / f"init_{model}.caffemodel", seed=5)
             for model in MODELS}
    run(config, caffe_run, "caffe", inits)
    for name in ("dataset", "weights"):
        shutil.copytree(caffe_run / name, torch_run / name)
    run(config, torch_run, "torch", inits)
    return caffe_run, torch_run


def normwise(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("feature", ["object", "scene"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_features_agree(runs, feature, split):
    caffe_run, torch_run = runs
    with h5py.File(caffe_run / "features" / feature / f"{split}.h5") as want, h5py.File(torch_run / "features" / feature / f"{split}.h5") as got:
        assert list(got["image"][:]) == list(want["image"][:])
        assert normwise(got["features"][:], want["features"][:]) < 1e-4


@pytest.mark.parametrize("model", MODELS)
def test_training_and_table_row_agree(runs, model):
    """Features that differ by 1e-6 (above) drift apart slowly over the 1,200 iterations at base_lr 0.5: the loss
    curves agree within 1e-2 relative (measured: at most 3.5e-3 for object_scene) and each metric within two of
    the 60 test images."""
    caffe_run, torch_run = runs
    want_log, got_log = (parse_log(run / "models" / model / "train.log") for run in runs)
    assert [row.iteration for row in got_log.train] == [row.iteration for row in want_log.train]
    for want_row, got_row in zip(want_log.train, got_log.train):
        assert got_row.loss == pytest.approx(want_row.loss, rel=1e-2), want_row.iteration
    with h5py.File(caffe_run / "eval" / model / "scores.h5") as want, h5py.File(torch_run / "eval" / model / "scores.h5") as got:
        assert normwise(got["scores"][:], want["scores"][:]) < 0.1
    want, got = (json.loads((run / "eval" / model / "metrics.json").read_text()) for run in runs)
    assert (want["engine"], got["engine"]) == ("caffe", "torch")
    for key in ("precision@1", "recall@5", "accuracy@5"):
        assert got[key] == pytest.approx(want[key], abs=2 / TEST_SIZE), key
