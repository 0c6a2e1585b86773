"""``harrison train`` resumes a rerun from the newest snapshot whose weights are finite: a diverged run leaves
snapshots holding NaN or inf, which are passed over (and named) instead of resumed from."""
from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from harrison.cli import main
from harrison.config import PROJECT_ROOT
from harrison.proto import caffe_pb2
from harrison.proto.io import (
    array_to_blob,
    blob_to_array,
    read_caffemodel,
    read_solver,
    read_solverstate,
    write_caffemodel,
    write_prototxt,
    write_solverstate,
)
from harrison.stages.train import resumable_state
from test_recommend import small_config

SOLVER = PROJECT_ROOT / "prototxt" / "demo" / "classifier" / "solver_object_scene.prototxt"
MODEL = "object_scene"


def fake_snapshot(folder: Path, iteration: int, weight: float, history: float, *, weights_file: bool = True) -> None:
    """``m_iter_<iteration>``: a .caffemodel with one layer of ``weight`` and a .solverstate with ``history``."""
    model = f"snapshots/m_iter_{iteration}.caffemodel"
    if weights_file:
        net = caffe_pb2.NetParameter()
        layer = net.layer.add(name="fc", type="InnerProduct")
        layer.blobs.append(array_to_blob(np.full((2, 3), weight, np.float32)))
        write_caffemodel(folder / model, net)
    state = caffe_pb2.SolverState(iter=iteration, learned_net=model)
    state.history.append(array_to_blob(np.full((2, 3), history, np.float32)))
    write_solverstate(folder / f"snapshots/m_iter_{iteration}.solverstate", state)


def test_snapshots_with_non_finite_weights_or_history_are_passed_over(tmp_path):
    (tmp_path / "snapshots").mkdir()
    solver = tmp_path / "solver.prototxt"
    # learned_net is relative to the solver's folder, as Caffe (run there) writes it
    solver.write_text('net: "net.prototxt"\nmax_iter: 60\nsnapshot_prefix: "snapshots/m"\n')
    assert resumable_state(solver) == (None, [])
    fake_snapshot(tmp_path, 10, 1.0, 0.5)
    fake_snapshot(tmp_path, 20, 2.0, 0.5)
    fake_snapshot(tmp_path, 30, np.nan, 0.5)
    fake_snapshot(tmp_path, 40, 2.0, np.inf)
    fake_snapshot(tmp_path, 50, 2.0, 0.5, weights_file=False)
    state, skipped = resumable_state(solver)
    assert state == tmp_path / "snapshots" / "m_iter_20.solverstate"
    assert [path.name for path in skipped] == [f"m_iter_{i}.solverstate" for i in (50, 40, 30)]
    for iteration in (10, 20):
        (tmp_path / f"snapshots/m_iter_{iteration}.caffemodel").unlink()
    state, skipped = resumable_state(solver)
    assert state is None and len(skipped) == 5


def diverged_snapshot(snapshots: Path, iteration: int) -> None:
    """Add the snapshot real Caffe writes at the iteration its loss became NaN: weights and history all NaN."""
    net = read_caffemodel(snapshots / f"{MODEL}_iter_{iteration - 1}.caffemodel")
    for layer in net.layer:
        for index, blob in enumerate(layer.blobs):
            layer.blobs[index].CopyFrom(array_to_blob(np.full(blob_to_array(blob).shape, np.nan, np.float32)))
    write_caffemodel(snapshots / f"{MODEL}_iter_{iteration}.caffemodel", net)
    state = read_solverstate(snapshots / f"{MODEL}_iter_{iteration - 1}.solverstate")
    state.iter, state.learned_net = iteration, str(snapshots / f"{MODEL}_iter_{iteration}.caffemodel")
    for index, blob in enumerate(state.history):
        state.history[index].CopyFrom(array_to_blob(np.full(blob_to_array(blob).shape, np.nan, np.float32)))
    write_solverstate(snapshots / f"{MODEL}_iter_{iteration}.solverstate", state)


def test_hdf5_snapshots_are_checked_the_same_way(tmp_path):
    """snapshot_format: HDF5 leaves ``.solverstate.h5`` (learned_net a string, history/<i>) and ``.caffemodel.h5``
    (data/<layer>/<i>), as Caffe writes them."""
    (tmp_path / "snapshots").mkdir()
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "net.prototxt"\nmax_iter: 60\nsnapshot_prefix: "snapshots/m"\nsnapshot_format: HDF5\n')
    for iteration, weight in ((10, 1.0), (20, np.inf)):
        model = f"snapshots/m_iter_{iteration}.caffemodel.h5"
        with h5py.File(tmp_path / model, "w") as handle:
            handle["data/fc/0"] = np.full((2, 3), weight, np.float32)
        with h5py.File(tmp_path / f"snapshots/m_iter_{iteration}.solverstate.h5", "w") as handle:
            handle["iter"], handle["learned_net"], handle["current_step"] = iteration, np.bytes_(model), 0
            handle["history/0"] = np.zeros((2, 3), np.float32)
    state, skipped = resumable_state(solver)
    assert state.name == "m_iter_10.solverstate.h5" and [path.name for path in skipped] == ["m_iter_20.solverstate.h5"]


def test_a_rerun_after_divergence_resumes_from_the_last_finite_snapshot(tmp_path, capsys):
    solver = read_solver(SOLVER)
    solver.net = str((SOLVER.parent / solver.net).resolve())
    solver.base_lr, solver.max_iter, solver.snapshot, solver.display, solver.test_interval = 1e6, 100, 1, 1, 1000
    config = small_config(tmp_path, posts=60, **{f"models.{MODEL}.solver": str(write_prototxt(tmp_path / "solver.prototxt", solver))})
    common = ["--config", str(config), "--engine", "torch"]
    assert main(["build-dataset", "--config", str(config)]) == 0
    assert main(["make-weights", *common]) == 0
    assert main(["extract", *common, "--batch-size", "8"]) == 0
    capsys.readouterr()
    train = ["train", *common, "--model", MODEL]
    assert main(train) == 2
    at = int(re.search(r"training diverged at iteration (\d+)", capsys.readouterr().err)[1])
    assert at >= 2
    snapshots = tmp_path / "run" / "models" / MODEL / "snapshots"
    diverged_snapshot(snapshots, at)
    assert main(train) == 2  # the same solver diverges again, from the last sound snapshot
    err = capsys.readouterr().err
    assert f"passing over {MODEL}_iter_{at}.solverstate: weights not finite" in err
    assert f"resuming from {MODEL}_iter_{at - 1}.solverstate" in err
    assert f"training diverged at iteration {at}" in err
