"""The torch engine's SGD solver: lr policies, Caffe's update order, iter_size, clipping, snapshots, resume."""
from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest
import torch

from harrison import caffelog
from harrison.engines.torch.solver import SGDSolver, learning_rate, run_solver, snapshot_prefix
from harrison.errors import HarrisonError
from harrison.proto import caffe_pb2
from harrison.proto import io as proto_io
from trainnets import weights_of, write_setup


def _rates(policy, iterations, **fields):
    param = caffe_pb2.SolverParameter(lr_policy=policy, base_lr=0.01, **fields)
    rates, step = [], 0
    for it in iterations:
        rate, step = learning_rate(param, it, step)
        rates.append(rate)
    return rates, step


@pytest.mark.parametrize("policy, fields, iterations, expected", [
    ("fixed", {}, [0, 500], [0.01, 0.01]),
    ("step", {"gamma": 0.1, "stepsize": 100}, [0, 99, 100, 250], [0.01, 0.01, 0.001, 0.0001]),
    ("exp", {"gamma": 0.99}, [0, 10], [0.01, 0.009043820750088045]),
    ("inv", {"gamma": 1e-4, "power": 0.75}, [0, 1000], [0.01, 0.01 * 1.1 ** -0.75]),
    ("multistep", {"gamma": 0.5, "stepvalue": [3, 5]}, range(7), [0.01] * 3 + [0.005] * 2 + [0.0025] * 2),
    ("poly", {"power": 2.0, "max_iter": 100}, [0, 25, 100], [0.01, 0.005625, 0.0]),
    ("sigmoid", {"gamma": 0.05, "stepsize": 100}, [100, 120], [0.005, 0.01 / (1 + math.exp(-1))]),
])
def test_lr_policies_match_hand_computed_rates(policy, fields, iterations, expected):
    rates, _ = _rates(policy, iterations, **fields)
    assert rates == pytest.approx(expected, rel=2e-6, abs=1e-12)


def test_step_and_multistep_keep_current_step():
    assert _rates("step", [250], gamma=0.1, stepsize=100)[1] == 2
    # multistep raises the step by at most one per iteration, as Caffe does
    rates, step = _rates("multistep", [10, 11], gamma=0.5, stepvalue=[3, 5])
    assert rates == pytest.approx([0.005, 0.0025]) and step == 2


def test_unknown_policy_and_solver_type_are_refused(tmp_path):
    with pytest.raises(HarrisonError, match="lr_policy 'cosine'"):
        learning_rate(caffe_pb2.SolverParameter(lr_policy="cosine"), 0, 0)
    solver = write_setup(tmp_path, type='"Adam"')
    with pytest.raises(HarrisonError, match="solver type 'Adam'"):
        run_solver(solver, log=tmp_path / "train.log", progress=False)
    solver = write_setup(tmp_path, snapshot_format="HDF5")
    with pytest.raises(HarrisonError, match="HDF5"):
        run_solver(solver, log=tmp_path / "train.log", progress=False)


def test_snapshot_prefix_as_caffe_settles_it(tmp_path):
    assert snapshot_prefix(caffe_pb2.SolverParameter(), "models/solver.prototxt") == "models/solver"
    (tmp_path / "snaps").mkdir()
    param = caffe_pb2.SolverParameter(snapshot_prefix=str(tmp_path / "snaps"))
    assert snapshot_prefix(param, "x/solver.prototxt") == str(tmp_path / "snaps" / "solver")
    assert snapshot_prefix(caffe_pb2.SolverParameter(snapshot_prefix="a/b"), "s.prototxt") == "a/b"


def _solver(tmp_path, **fields):
    from harrison.caffelog import LogWriter

    return SGDSolver(write_setup(tmp_path, **fields), log=LogWriter(tmp_path / "unit.log"), device="cpu")


def _caffe_update(weights, grads, history, rate, param, lr_mults, decay_mults):
    """Caffe's ApplyUpdate written out in numpy float64 (clip, normalize, regularize, momentum, update)."""
    grads = [g.astype(np.float64) for g in grads]
    if param.clip_gradients >= 0:
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
        if norm > param.clip_gradients:
            grads = [g * param.clip_gradients / norm for g in grads]
    new_w, new_h = [], []
    for w, g, h, lr_mult, decay_mult in zip(weights, grads, history, lr_mults, decay_mults):
        g = g / param.iter_size
        decay = param.weight_decay * decay_mult
        g = g + decay * (np.sign(w) if param.regularization_type == "L1" else w)
        h = param.momentum * h + rate * lr_mult * g
        new_h.append(h)
        new_w.append(w - h)
    return new_w, new_h


@pytest.mark.parametrize("fields", [
    {},
    {"regularization_type": '"L1"'},
    {"iter_size": 3},
    {"clip_gradients": 0.5},
    {"momentum": 0},
    {"momentum": None},  # unset: Caffe's default 0
])
def test_sgd_steps_follow_caffes_order_across_an_lr_change(tmp_path, fields):
    sgd = _solver(tmp_path, **{"momentum": 0.9, "weight_decay": 0.01, **fields})
    param = sgd.param
    rng = np.random.default_rng(1)
    weights = [item.param.detach().numpy().astype(np.float64) for item in sgd.learnable]
    history = [np.zeros_like(w) for w in weights]
    lr_mults = [item.lr_mult for item in sgd.learnable]
    decay_mults = [item.decay_mult for item in sgd.learnable]
    assert lr_mults == [1, 2, 1, 2] and decay_mults == [1, 0, 1, 0]
    for rate in (0.1, 0.1, 0.02):  # the rate changes inside the history
        grads = [rng.standard_normal(w.shape) for w in weights]
        sgd.apply_update([torch.tensor(g, dtype=torch.float32) for g in grads], rate)
        weights, history = _caffe_update(weights, grads, history, rate, param, lr_mults, decay_mults)
        for item, w in zip(sgd.learnable, weights):
            np.testing.assert_allclose(item.param.detach().numpy(), w, rtol=1e-5, atol=1e-6)
        for got, want in zip(sgd.history(), history):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_clip_logs_caffes_line(tmp_path):
    sgd = _solver(tmp_path, clip_gradients=0.5)
    sgd.apply_update([torch.full_like(item.param, 1.0) for item in sgd.learnable], 0.1)
    sgd.log.close()
    assert "Gradient clipping: scaling down gradients (L2 norm" in (tmp_path / "unit.log").read_text()


def test_iter_size_equals_the_larger_batch(tmp_path):
    big = run_solver(write_setup(tmp_path / "big", batch=10, max_iter=16, snapshot=0), log=tmp_path / "big.log", progress=False)
    small = run_solver(write_setup(tmp_path / "small", batch=5, iter_size=2, max_iter=16, snapshot=0),
                       log=tmp_path / "small.log", progress=False)
    big_loss = caffelog.parse_log(big.log).train_loss()
    small_loss = caffelog.parse_log(small.log).train_loss()
    assert list(big_loss) == list(range(16))
    assert [small_loss[i] for i in range(16)] == pytest.approx([big_loss[i] for i in range(16)], rel=1e-5)
    for key, value in weights_of(big.weights).items():
        np.testing.assert_allclose(weights_of(small.weights)[key], value, rtol=1e-4, atol=1e-6)


def test_snapshots_are_named_and_filled_as_caffe_does(tmp_path):
    result = run_solver(write_setup(tmp_path, max_iter=10, snapshot=4, lr_policy='"multistep"', stepvalue=[3, 6],
                                    test_compute_loss="true"),
                        log=tmp_path / "train.log", progress=False)
    names = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert names == [f"toy_iter_{n}.{ext}" for n in (10, 4, 8) for ext in ("caffemodel", "solverstate")]
    assert result.weights == tmp_path / "snapshots/toy_iter_10.caffemodel"
    assert result.state == tmp_path / "snapshots/toy_iter_10.solverstate" and result.iterations == 10
    state = proto_io.read_solverstate(result.state)
    assert state.iter == 10 and state.current_step == 2 and state.learned_net == str(result.weights)
    assert [tuple(proto_io.blob_to_array(h).shape) for h in state.history] == [(12, 16), (12,), (5, 12), (5,)]
    log = caffelog.parse_log(result.log)
    assert log.done and [s.path for s in log.snapshots][-2:] == [str(result.weights), str(result.state)]
    assert log.final_loss is not None and log.final_loss.iteration == 10
    assert sorted({row.iteration for row in log.test}) == [0]  # test_interval 50 > max_iter
    text = result.log.read_text()
    assert "MultiStep Status: Iteration 3, step = 1" in text
    assert f"Test loss: {caffelog.cfloat(log.test_values('loss')[0])}" in text


def test_resume_equals_an_uninterrupted_run(tmp_path):
    # dropout on and a snapshot off any epoch boundary: the data layers and the masks must continue exactly
    setup = {"max_iter": 30, "snapshot": 13, "stepsize": 10, "dropout": 0.5, "test_interval": 7}
    full = run_solver(write_setup(tmp_path / "full", **setup), log=tmp_path / "full.log", progress=False)
    part = write_setup(tmp_path / "part", **setup)
    resumed = run_solver(part, log=tmp_path / "part.log", resume=tmp_path / "full/snapshots/toy_iter_13.solverstate",
                         progress=False)
    full_log, part_log = caffelog.parse_log(full.log), caffelog.parse_log(resumed.log)
    assert [r.iteration for r in part_log.train] == list(range(13, 30))
    for row in part_log.train:
        assert row.raw_loss == pytest.approx(full_log.train[row.iteration].raw_loss, rel=1e-5)
    assert part_log.test_values("loss") == pytest.approx({k: v for k, v in full_log.test_values("loss").items() if k >= 13}, rel=1e-5)
    for key, value in weights_of(full.weights).items():
        np.testing.assert_allclose(weights_of(resumed.weights)[key], value, rtol=1e-5, atol=1e-7)


def test_weights_start_training_from_a_caffemodel(tmp_path):
    first = run_solver(write_setup(tmp_path / "a", max_iter=5), log=tmp_path / "a.log", progress=False)
    again = run_solver(write_setup(tmp_path / "b", max_iter=0, snapshot=0, random_seed=99), log=tmp_path / "b.log",
                       weights=first.weights, progress=False)
    for key, value in weights_of(first.weights).items():
        np.testing.assert_array_equal(weights_of(again.weights)[key], value)


def test_divergence_names_the_iteration_and_keeps_snapshots(tmp_path):
    solver = write_setup(tmp_path, base_lr=1e6, momentum=0.99, weight_decay=0, snapshot=2, max_iter=200)
    with pytest.raises(HarrisonError, match=r"diverged at iteration \d+") as info:
        run_solver(solver, log=tmp_path / "train.log", progress=False)
    assert "toy_iter_2.caffemodel" in str(info.value)
    assert (tmp_path / "snapshots/toy_iter_2.caffemodel").exists()


def test_blobs_with_lr_mult_zero_stay_frozen(tmp_path):
    sgd = _solver(tmp_path, momentum=0.9, weight_decay=0.01, clip_gradients=1.0)
    sgd.learnable[0].lr_mult = 0
    before = [item.param.detach().clone() for item in sgd.learnable]
    for item in sgd.learnable:
        item.param.grad = torch.full_like(item.param, 0.1)
    sgd.apply_update(sgd._grads(), 0.1)
    assert torch.equal(sgd.learnable[0].param, before[0])
    assert all(not torch.equal(item.param, old) for item, old in zip(sgd.learnable[1:], before[1:]))
    # the frozen blob's diff is left out of the clipping norm, as Caffe computes no diff for it
    norm = math.sqrt(sum(0.01 * item.param.numel() for item in sgd.learnable[1:]))
    np.testing.assert_allclose(sgd.history()[1].numpy(), 0.1 * 2 * 0.1 * min(1.0, 1.0 / norm), rtol=1e-5)


def test_a_signal_stops_after_the_iteration_with_a_snapshot(tmp_path):
    sgd = _solver(tmp_path, max_iter=50, snapshot=0)
    forward = sgd.net.forward

    def forward_then_signal(*args, **kwargs):
        if sgd.iter == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(*args, **kwargs)

    sgd.net.forward = forward_then_signal
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match=r"stopped by SIGTERM at iteration 6 of 50; resume from .*toy_iter_6\.solverstate"):
        sgd.solve(progress=False)
    assert signal.getsignal(signal.SIGTERM) is handler
    sgd.log.close()
    assert proto_io.read_solverstate(tmp_path / "snapshots/toy_iter_6.solverstate").iter == 6
    assert (tmp_path / "unit.log").read_text().splitlines()[-1].endswith("solver.cpp:311] Optimization stopped early.")
