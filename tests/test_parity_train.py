"""Training parity with real Caffe: the same classifier, initial weights and HDF5 order give the same losses.

200 iterations across an lr step, dropout ratio 0 (Caffe's masks come from its own generator), display 1.
A small classifier: every iteration's loss agrees within 1e-4 relative, and so do the final weights (normwise)
and the tests. The paper's classifier at full size: see the second test for why its tolerance is 1e-3.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harrison import caffelog
from harrison.config import PROJECT_ROOT
from harrison.engines.torch.solver import run_solver
from harrison.proto import caffe_pb2
from harrison.proto import io as proto_io
from trainnets import assert_losses_close, assert_weights_close, weights_of, write_setup

pytestmark = pytest.mark.caffe

SETUP = {"max_iter": 200, "stepsize": 100, "base_lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005,
         "display": 1, "test_interval": 50, "test_iter": 2, "snapshot": 0, "dropout": 0.0}
CLASSIFIER = PROJECT_ROOT / "prototxt" / "classifier"
PAPER_CLASSES = 997


def test_torch_training_follows_real_caffe(caffe_engine, tmp_path):
    caffe_solver = write_setup(tmp_path / "caffe", **SETUP)
    torch_solver = write_setup(tmp_path / "torch", **SETUP)
    init = caffe_engine.init_weights(tmp_path / "caffe/net.prototxt", tmp_path / "init.caffemodel", seed=3)

    caffe_run = caffe_engine.train(caffe_solver, log=tmp_path / "caffe.log", weights=init)
    torch_run = run_solver(torch_solver, log=tmp_path / "torch.log", weights=init, progress=False)

    caffe_log, torch_log = caffelog.parse_log(caffe_run.log), caffelog.parse_log(torch_run.log)
    assert_losses_close(torch_log, caffe_log, range(200))
    assert sorted({row.lr for row in torch_log.train}) == pytest.approx([0.025, 0.05])
    # the loss fell: the comparison is over real training, not a flat line
    assert torch_log.train[-1].raw_loss < 0.7 * torch_log.train[0].raw_loss
    tests = [(r.iteration, r.index, r.value) for r in caffe_log.test]
    assert [(r.iteration, r.index) for r in torch_log.test] == [(it, index) for it, index, _ in tests]
    assert [r.value for r in torch_log.test] == pytest.approx([value for _, _, value in tests], rel=1e-4, abs=1e-6)
    assert torch_run.weights.name == caffe_run.weights.name == "toy_iter_200.caffemodel"
    assert_weights_close(torch_run.weights, caffe_run.weights)


def paper_setup(folder: Path, data: Path) -> Path:
    """prototxt/classifier's object_scene solver and net, as they are but for: the data (``data``'s lists),
    997 outputs (the release's classes), dropout 0, and a short run of 200 iterations with the lr step at 100."""
    folder.mkdir(parents=True)
    net = proto_io.read_net(CLASSIFIER / "train_test.prototxt")
    for layer in net.layer:
        if layer.type == "HDF5Data":
            split = "train" if layer.include[0].phase == caffe_pb2.TRAIN else "test"
            layer.hdf5_data_param.source = str(data / f"{split}.txt")
        elif layer.type == "Dropout":
            layer.dropout_param.dropout_ratio = 0.0
        elif layer.name == "fc_out":
            layer.inner_product_param.num_output = PAPER_CLASSES
    solver = proto_io.read_solver(CLASSIFIER / "solver_object_scene.prototxt")
    solver.net = str(proto_io.write_prototxt(folder / "train_test.prototxt", net))
    solver.max_iter, solver.stepsize, solver.display = 200, 100, 1
    solver.test_interval, solver.test_iter[:] = 100, [2]
    solver.snapshot, solver.snapshot_prefix = 0, str(folder / "paper")
    return proto_io.write_prototxt(folder / "solver.prototxt", solver)


def paper_data(folder: Path, rows: int = 1000, test_rows: int = 200, width: int = 8192, seed: int = 0) -> Path:
    """fc7-like rows (non-negative, about half zero) with 1 to 10 of 997 labels that depend on them."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((width, PAPER_CLASSES)).astype(np.float32) / np.sqrt(width)
    for split, count in (("train", rows), ("test", test_rows)):
        x = np.maximum(rng.standard_normal((count, width)).astype(np.float32), 0) * 2
        scores = x @ projection
        labels = np.zeros_like(scores)
        for row, k in zip(range(count), rng.integers(1, 11, count)):
            labels[row, np.argsort(-scores[row])[:k]] = 1
        with h5py.File(folder / f"{split}.h5", "w") as handle:
            handle["data"], handle["label"] = x, labels
        (folder / f"{split}.txt").write_text(f"{folder / f'{split}.h5'}\n")
    return folder


def float64_losses(init: Path, data: Path, solver: Path, iterations: int) -> list[float]:
    """The first ``iterations`` losses of the paper-size set-up computed in float64 with Caffe's SGD written out
    (FULL normalisation, lr_mult 1 and 2, decay_mult 1 and 0, momentum history holding the rate)."""
    param = proto_io.read_solver(solver)
    blobs = weights_of(init)
    params = [torch.tensor(blobs[(layer, index)], dtype=torch.float64) for layer in ("fc1", "fc2", "fc_out") for index in (0, 1)]
    history = [torch.zeros_like(p) for p in params]
    with h5py.File(data / "train.h5", "r") as handle:
        x_all, y_all = (torch.tensor(handle[key][:], dtype=torch.float64) for key in ("data", "label"))
    losses = []
    for it in range(iterations):
        rows = torch.arange(it * 100, it * 100 + 100) % len(x_all)
        leaves = [p.clone().requires_grad_() for p in params]
        hidden = torch.relu(x_all[rows] @ leaves[0].T + leaves[1])
        hidden = torch.relu(hidden @ leaves[2].T + leaves[3])
        loss = F.binary_cross_entropy_with_logits(hidden @ leaves[4].T + leaves[5], y_all[rows])
        grads = torch.autograd.grad(loss, leaves)
        for k, grad in enumerate(grads):
            lr_mult, decay_mult = (1, 1) if k % 2 == 0 else (2, 0)
            history[k] = param.momentum * history[k] + param.base_lr * lr_mult * (grad + param.weight_decay * decay_mult * params[k])
            params[k] = params[k] - history[k]
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_the_papers_classifier_trains_as_in_real_caffe(caffe_engine, tmp_path):
    """The Table 1 classifier at its real sizes (8,192 -> 4,096 -> 4,096 -> 997, batch 100, base_lr 0.1,
    momentum 0.9, loss normalisation FULL), dropout 0: 200 iterations across an lr step in both engines.

    At these sizes float32 rounding matters: when the loss turns up at iteration 10 (momentum overshoot),
    Caffe's losses move up to 4.3e-4 away from the same computation in float64, the torch engine's stay
    within 1e-5 of it (measured), and the two engines then differ by up to 2e-4 per iteration and 6e-3
    normwise in the weights after 200 iterations. So: every loss within 1e-3 of Caffe's, and the
    torch engine's first 16 within 1e-4 of float64 (the exact computation), which Caffe's are not.
    """
    data = paper_data(tmp_path / "data")
    caffe_solver, torch_solver = paper_setup(tmp_path / "caffe", data), paper_setup(tmp_path / "torch", data)
    init = caffe_engine.init_weights(tmp_path / "caffe" / "train_test.prototxt", tmp_path / "init.caffemodel", seed=4)

    caffe_run = caffe_engine.train(caffe_solver, log=tmp_path / "caffe.log", weights=init)
    torch_run = run_solver(torch_solver, log=tmp_path / "torch.log", weights=init, progress=False)

    caffe_log, torch_log = caffelog.parse_log(caffe_run.log), caffelog.parse_log(torch_run.log)
    assert_losses_close(torch_log, caffe_log, range(200), rel=1e-3)
    assert sorted({row.lr for row in torch_log.train}) == pytest.approx([0.01, 0.1])
    assert torch_log.train[-1].raw_loss < 0.9 * torch_log.train[0].raw_loss
    assert [r.value for r in torch_log.test] == pytest.approx([r.value for r in caffe_log.test], rel=1e-3)
    assert_weights_close(torch_run.weights, caffe_run.weights, tolerance=2e-2)
    exact = float64_losses(init, data, torch_solver, 16)
    assert [row.raw_loss for row in torch_log.train[:16]] == pytest.approx(exact, rel=1e-4)
    caffe_errors = [abs(row.raw_loss - want) / want for row, want in zip(caffe_log.train, exact)]
    assert max(caffe_errors) > 1e-4  # the reason for the wider tolerance against Caffe above
