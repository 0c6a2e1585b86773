"""Training parity with real Caffe: the same classifier, initial weights and HDF5 order give the same losses.

200 iterations across an lr step, dropout ratio 0 (Caffe's masks come from its own generator), display 1:
every iteration's loss agrees within 1e-4 relative, and so do the final weights (normwise) and the tests.
"""
from __future__ import annotations

import pytest

from harrison import caffelog
from harrison.engines.torch.solver import run_solver
from trainnets import assert_losses_close, assert_weights_close, write_setup

pytestmark = pytest.mark.caffe

SETUP = {"max_iter": 200, "stepsize": 100, "base_lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005,
         "display": 1, "test_interval": 50, "test_iter": 2, "snapshot": 0, "dropout": 0.0}


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
