"""Snapshots cross engines: a .caffemodel and .solverstate written by one engine load in the other, score the
same and continue training the same (resumed at an epoch boundary, where Caffe's restarted data layers
and the torch engine's repositioned ones read the same batches)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harrison import caffelog
from harrison.engines.torch.net import TorchNet
from harrison.engines.torch.solver import run_solver
from harrison.proto import io as proto_io
from trainnets import FEATURES, assert_losses_close, assert_weights_close, write_setup

pytestmark = pytest.mark.caffe

# 80 train rows in batches of 10: an epoch is 8 iterations, so the snapshot at 8 is an epoch boundary;
# the 20 test rows are read whole by each test (2 x 10), so every test starts at the first test row.
SETUP = {"max_iter": 16, "snapshot": 8, "stepsize": 12, "display": 1, "test_interval": 4, "test_iter": 2, "dropout": 0.0}


def _scores(caffe_engine, deploy, weights) -> tuple[np.ndarray, np.ndarray]:
    """The deploy net's sigmoid outputs on one fixed batch, from real Caffe and from the torch engine."""
    batch = np.random.default_rng(5).standard_normal((10, FEATURES)).astype(np.float32)
    with caffe_engine.load_net(deploy, weights) as runner:
        caffe_prob = runner.forward({"data": batch}, ["prob"])["prob"]
    net = TorchNet(proto_io.read_net(deploy), "TEST", torch.device("cpu"))
    net.load_caffemodel(weights)
    with torch.no_grad():
        torch_prob = net.forward({"data": torch.from_numpy(batch)})["prob"].numpy()
    return caffe_prob, torch_prob


def _state_matches_model(state_path, model_path):
    state = proto_io.read_solverstate(state_path)
    assert state.iter == 8 and state.learned_net == str(model_path)
    model = proto_io.layer_blobs(proto_io.read_caffemodel(model_path))
    assert [proto_io.blob_to_array(h).shape for h in state.history] == [b.shape for blobs in model.values() for b in blobs]


def test_torch_snapshots_load_score_and_resume_in_caffe(caffe_engine, tmp_path):
    torch_solver = write_setup(tmp_path / "torch", **SETUP)
    caffe_solver = write_setup(tmp_path / "caffe", **SETUP)
    init = caffe_engine.init_weights(tmp_path / "torch/net.prototxt", tmp_path / "init.caffemodel", seed=4)
    torch_run = run_solver(torch_solver, log=tmp_path / "torch.log", weights=init, progress=False)
    model, state = tmp_path / "torch/snapshots/toy_iter_8.caffemodel", tmp_path / "torch/snapshots/toy_iter_8.solverstate"
    _state_matches_model(state, model)

    caffe_prob, torch_prob = _scores(caffe_engine, tmp_path / "torch/deploy.prototxt", model)
    np.testing.assert_allclose(caffe_prob, torch_prob, rtol=1e-5, atol=1e-6)

    caffe_run = caffe_engine.train(caffe_solver, log=tmp_path / "caffe.log", resume=state)
    caffe_log, torch_log = caffelog.parse_log(caffe_run.log), caffelog.parse_log(torch_run.log)
    assert_losses_close(caffe_log, _from(torch_log, 8), range(8, 16))
    assert_weights_close(caffe_run.weights, torch_run.weights)


def test_caffe_snapshots_load_score_and_resume_in_torch(caffe_engine, tmp_path):
    caffe_solver = write_setup(tmp_path / "caffe", **SETUP)
    torch_solver = write_setup(tmp_path / "torch", **SETUP)
    caffe_run = caffe_engine.train(caffe_solver, log=tmp_path / "caffe.log")
    model, state = tmp_path / "caffe/snapshots/toy_iter_8.caffemodel", tmp_path / "caffe/snapshots/toy_iter_8.solverstate"
    _state_matches_model(state, model)

    caffe_prob, torch_prob = _scores(caffe_engine, tmp_path / "caffe/deploy.prototxt", model)
    np.testing.assert_allclose(torch_prob, caffe_prob, rtol=1e-5, atol=1e-6)

    torch_run = run_solver(torch_solver, log=tmp_path / "torch.log", resume=state, progress=False)
    caffe_log, torch_log = caffelog.parse_log(caffe_run.log), caffelog.parse_log(torch_run.log)
    assert_losses_close(torch_log, _from(caffe_log, 8), range(8, 16))
    assert_weights_close(torch_run.weights, caffe_run.weights)
    assert proto_io.read_solverstate(torch_run.state).iter == 16


def _from(log: caffelog.TrainingLog, iteration: int) -> caffelog.TrainingLog:
    """The part of a log from ``iteration`` on."""
    return caffelog.TrainingLog(train=[row for row in log.train if row.iteration >= iteration],
                                test=[row for row in log.test if row.iteration >= iteration])
