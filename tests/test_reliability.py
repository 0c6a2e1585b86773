"""Reliability across stages, on a small demo run: interrupted extraction and training (SIGINT, SIGTERM, kill -9) resume to
the outputs of an uninterrupted run; divergence stops with the iteration named and the snapshots before it kept;
mismatched inputs are refused before any work; a full disk or an unwritable folder is a clear error that leaves
earlier outputs intact. The stages run as subprocesses of the ``harrison`` command line, as a user runs them.
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

from harrison.cli import main
from harrison.config import PROJECT_ROOT, derive_config
from harrison.files import sha256
from harrison.proto.io import layer_blobs, read_caffemodel, read_solver, write_prototxt
from test_recommend import small_config

SOLVER = PROJECT_ROOT / "prototxt" / "demo" / "classifier" / "solver_object_scene.prototxt"
MODEL = "object_scene"
FINAL, EVERY = 150, 50  # the short solver's max_iter and snapshot interval


def solver_copy(out: Path, **fields: float) -> Path:
    """The demo object_scene solver with some fields changed (its net named by absolute path)."""
    solver = read_solver(SOLVER)
    solver.net = str((SOLVER.parent / solver.net).resolve())
    for name, value in fields.items():
        setattr(solver, name, value)
    return write_prototxt(out, solver)


class Stage:
    """``harrison ARGS`` as a subprocess, its stderr collected as it comes (progress bars included)."""

    def __init__(self, *args: str, limit_file_bytes: int | None = None):
        def preexec() -> None:
            if limit_file_bytes is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

        self.process = subprocess.Popen([sys.executable, "-m", "harrison.cli", *args], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, preexec_fn=preexec, cwd=PROJECT_ROOT)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while chunk := os.read(self.process.stderr.fileno(), 4096):
            self.chunks.append(chunk)

    @property
    def err(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")

    def wait_until(self, condition: Callable[[], bool], timeout: float = 150) -> None:
        """Poll ``condition`` while the stage runs; fail if the stage ends first."""
        end = time.time() + timeout
        while not condition():
            assert self.process.poll() is None, f"the stage ended (exit {self.process.returncode}) too early:\n{self.err[-2000:]}"
            assert time.time() < end, f"timed out:\n{self.err[-2000:]}"
            time.sleep(0.02)

    def finish(self, timeout: float = 150) -> int:
        code = self.process.wait(timeout)
        self.reader.join(10)
        return code

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        return self.finish()


def rows_done(stage: Stage, label: str) -> int:
    """The last row count a tqdm bar called ``label`` showed."""
    counts = re.findall(rf"{re.escape(label)}:.*?\| *(\d+)/\d+ \[", stage.err)
    return int(counts[-1]) if counts else 0


def resumed_at(stage: Stage) -> int:
    found = re.search(r"resuming at row (\d+)", stage.err)
    return int(found[1]) if found else 0


def copy_run(source: Path, target: Path, *folders: str) -> Path:
    for folder in folders:
        shutil.copytree(source / folder, target / folder)
    return target


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted torch-engine run: dataset, weights, features (batches of 4), object_scene on the short solver."""
    folder = tmp_path_factory.mktemp("reliability")
    solver = solver_copy(folder / "solver.prototxt", max_iter=FINAL, snapshot=EVERY, display=10, test_interval=EVERY)
    config = small_config(folder, posts=60, **{f"models.{MODEL}.solver": str(solver)})
    common = ["--config", str(config), "--engine", "torch"]
    assert main(["build-dataset", "--config", str(config)]) == 0
    assert main(["make-weights", *common]) == 0
    assert main(["extract", *common, "--batch-size", "4"]) == 0
    assert main(["train", *common, "--model", MODEL]) == 0
    return config, folder / "run"


@pytest.fixture(scope="module")
def extraction_reference(tmp_path_factory):
    """An uninterrupted extraction of the object net's train split, long enough (a few seconds) to stop mid-way."""
    folder = tmp_path_factory.mktemp("reliability-extract")
    config = small_config(folder, posts=600)
    common = ["--config", str(config), "--engine", "torch"]
    assert main(["build-dataset", "--config", str(config)]) == 0
    assert main(["make-weights", *common]) == 0
    assert main(["extract", *common, "--feature", "object", "--split", "train", "--batch-size", "4"]) == 0
    return config, folder / "run"


def test_extraction_resumes_after_sigterm_and_kill(extraction_reference, tmp_path):
    config, ref = extraction_reference
    work = copy_run(ref, tmp_path / "run", "dataset", "weights")
    args = ["extract", "--config", str(config), "--workdir", str(work), "--engine", "torch", "--feature", "object",
            "--split", "train", "--batch-size", "4"]
    final = work / "features" / "object" / "train.h5"
    stage = Stage(*args)
    stage.wait_until(lambda: rows_done(stage, "object/train") >= 4)
    stage.process.send_signal(signal.SIGSTOP)  # hold it mid-run while the test looks
    assert not final.exists(), "the extraction finished before it could be stopped"
    stage.process.send_signal(signal.SIGTERM)
    stage.process.send_signal(signal.SIGCONT)
    assert stage.finish() == 130
    assert "interrupted; rerun the same command to resume" in stage.err
    assert not final.exists() and final.with_name("train.h5.partial").exists()
    stage = Stage(*args)
    stage.wait_until(lambda: "resuming at row" in stage.err and rows_done(stage, "object/train") >= resumed_at(stage) + 8)
    assert resumed_at(stage) >= 4
    stage.stop(signal.SIGKILL)
    assert not final.exists()
    stage = Stage(*args)
    assert stage.finish() == 0, stage.err
    assert "resuming at row" in stage.err
    with h5py.File(final, "r") as got, h5py.File(ref / "features" / "object" / "train.h5", "r") as want:
        assert np.array_equal(got["features"][:], want["features"][:])
        assert list(got["image"][:]) == list(want["image"][:])
    assert not list(final.parent.glob("*.partial"))


def _blobs(path: Path) -> dict[str, list[np.ndarray]]:
    return layer_blobs(read_caffemodel(path))


def test_torch_training_resumes_after_sigint_and_kill(reference, tmp_path):
    config, ref = reference
    work = copy_run(ref, tmp_path / "run", "dataset", "weights", "features")
    args = ["train", "--config", str(config), "--workdir", str(work), "--engine", "torch", "--model", MODEL]
    snapshots = work / "models" / MODEL / "snapshots"
    stage = Stage(*args)
    stage.wait_until(lambda: (snapshots / f"{MODEL}_iter_{EVERY}.solverstate").exists())
    assert stage.stop(signal.SIGINT) == 130
    assert not (snapshots / f"{MODEL}_iter_{FINAL}.caffemodel").exists()
    stage = Stage(*args)
    stage.wait_until(lambda: "resuming from" in stage.err and (snapshots / f"{MODEL}_iter_{2 * EVERY}.solverstate").exists())
    stage.stop(signal.SIGKILL)
    stage = Stage(*args)
    assert stage.finish() == 0, stage.err
    assert f"resuming from {MODEL}_iter_{2 * EVERY}.solverstate" in stage.err
    got, want = _blobs(snapshots / f"{MODEL}_iter_{FINAL}.caffemodel"), _blobs(ref / "models" / MODEL / "snapshots" / f"{MODEL}_iter_{FINAL}.caffemodel")
    # the torch engine keeps Caffe's history divided by the rate and rescales it on restore: equal to float32 rounding
    assert got.keys() == want.keys()
    for layer in want:
        for a, b in zip(got[layer], want[layer]):
            assert np.abs(a - b).max() <= 1e-6 * np.abs(b).max(), layer
    got_loss, want_loss = (_train_losses(run / "models" / MODEL / "loss.csv") for run in (work, ref))
    assert got_loss.keys() == want_loss.keys() and len(got_loss) == FINAL // 10
    np.testing.assert_allclose(list(got_loss.values()), list(want_loss.values()), rtol=1e-5)


def _train_losses(path: Path) -> dict[int, float]:
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return {int(r[1]): float(r[3]) for r in rows if r[0] == "train" and r[2] == "loss"}


def test_caffe_training_continues_from_its_last_snapshot(reference, tmp_path, caffe_engine):
    _, ref = reference
    work = copy_run(ref, tmp_path / "run", "dataset", "weights", "features")
    solver = solver_copy(tmp_path / "solver.prototxt", max_iter=3000, snapshot=500, display=100, test_interval=1000)
    config = derive_config(ref.parent / "config.yaml", tmp_path / "config.yaml", {"workdir": str(work), f"models.{MODEL}.solver": str(solver)})
    args = ["train", "--config", str(config), "--engine", "caffe", "--model", MODEL]
    snapshots = work / "models" / MODEL / "snapshots"
    stage = Stage(*args)
    stage.wait_until(lambda: (snapshots / f"{MODEL}_iter_500.solverstate").exists())
    assert stage.stop(signal.SIGTERM) == 130
    assert not (snapshots / f"{MODEL}_iter_3000.caffemodel").exists()
    stage = Stage(*args)
    assert stage.finish() == 0, stage.err
    resumed = int(re.search(rf"resuming from {MODEL}_iter_(\d+)\.solverstate", stage.err)[1])
    assert resumed >= 500
    log = (work / "models" / MODEL / "train.log").read_text()
    assert f"_iter_{resumed}.solverstate" in log and "Optimization Done." in log
    assert (snapshots / f"{MODEL}_iter_3000.caffemodel").exists()
    rows = (work / "models" / MODEL / "loss.csv").read_text().splitlines()
    iterations = sorted({int(r.split(",")[1]) for r in rows[1:] if r.startswith("train,")})
    assert iterations[0] == 0 and iterations[-1] >= 2900


@pytest.mark.parametrize("engine", ["torch", "caffe"])
def test_divergence_names_the_iteration_and_keeps_earlier_snapshots(reference, tmp_path, request, engine):
    if engine == "caffe":
        request.getfixturevalue("caffe_engine")
    _, ref = reference
    work = copy_run(ref, tmp_path / "run", "dataset", "weights", "features")
    solver = solver_copy(tmp_path / "solver.prototxt", base_lr=1e8, max_iter=100, snapshot=1, display=1, test_interval=1000)
    config = derive_config(ref.parent / "config.yaml", tmp_path / "config.yaml",
                           {"workdir": str(work), f"models.{MODEL}.solver": str(solver)})
    stage = Stage("train", "--config", str(config), "--engine", engine, "--model", MODEL)
    assert stage.finish() == 2
    found = re.search(r"training diverged at iteration (\d+) \(loss (?:is|=) (-?nan|-?inf)\)", stage.err)
    assert found, stage.err
    at = int(found[1])
    assert at >= 2 and "Traceback" not in stage.err
    snapshots = work / "models" / MODEL / "snapshots"
    last_good = snapshots / f"{MODEL}_iter_{at - 1}.caffemodel"
    assert all(np.isfinite(b).all() for blobs in _blobs(last_good).values() for b in blobs)
    assert (snapshots / f"{MODEL}_iter_{at - 1}.solverstate").exists()
    assert not (snapshots / f"{MODEL}_iter_100.caffemodel").exists()
    assert '"status": "done"' not in (work / "models" / MODEL / "manifest.json").read_text()


def test_mismatched_inputs_are_refused_before_work(reference, tmp_path, capsys):
    config, ref = reference
    work = copy_run(ref, tmp_path / "run", "dataset", "weights", "features")
    listing = work / "dataset" / "train.tsv"
    listing.write_text("".join(listing.read_text().splitlines(keepends=True)[:-1]))  # another list than the features'
    assert main(["train", "--config", str(config), "--workdir", str(work), "--engine", "torch", "--model", MODEL]) == 2
    err = capsys.readouterr().err
    assert str(work / "features" / "object" / "train.h5") in err and str(listing) in err
    assert "rerun harrison extract" in err
    assert not (work / "models").exists()
    # a classifier whose output count is not the dataset's class count
    work = copy_run(ref, tmp_path / "run2", "dataset", "weights", "features", "models")
    vocab = work / "dataset" / "vocab.tsv"
    classes = len(vocab.read_text().splitlines()) - 1
    vocab.write_text("".join(vocab.read_text().splitlines(keepends=True)[:-1]))
    photo = next((PROJECT_ROOT / "data" / "demo" / "images").glob("*.jpg"))
    assert main(["recommend", str(photo), "--config", str(config), "--workdir", str(work), "--engine", "torch"]) == 2
    err = capsys.readouterr().err
    assert f"has {classes} outputs" in err and f"{classes - 1} classes" in err


def test_full_disk_during_extraction_is_a_clear_error(reference, tmp_path):
    config, ref = reference
    work = copy_run(ref, tmp_path / "run", "dataset", "weights", "features")
    before = {path: sha256(path) for path in work.rglob("*.h5")}
    (work / "features" / "scene" / "test.h5").unlink()
    stage = Stage("extract", "--config", str(config), "--workdir", str(work), "--engine", "torch", "--feature", "scene",
                  "--split", "test", "--batch-size", "4", limit_file_bytes=6000)
    assert stage.finish() == 2, stage.err
    assert "File too large" in stage.err and "Traceback" not in stage.err
    assert all(sha256(path) == digest for path, digest in before.items() if path.exists())


def test_full_disk_and_unwritable_folder_keep_the_report(reference, tmp_path):
    config, ref = reference
    work = copy_run(ref, tmp_path / "run", "dataset", "models")
    assert main(["report", "--config", str(config), "--workdir", str(work)]) == 0
    index = work / "results" / "report" / "index.html"
    before = index.read_text()
    stage = Stage("report", "--config", str(config), "--workdir", str(work), limit_file_bytes=2000)
    assert stage.finish() == 2
    assert "File too large" in stage.err and "intact" in stage.err
    assert "Traceback" not in stage.err
    assert index.read_text() == before
    assert [p.name for p in (work / "results").iterdir()] == ["report"]
    # an output folder that cannot be made: a file stands in its place
    shutil.rmtree(work / "results")
    (work / "results").write_text("not a folder")
    stage = Stage("report", "--config", str(config), "--workdir", str(work))
    assert stage.finish() == 2
    assert "cannot write" in stage.err and str(work / "results") in stage.err and "Traceback" not in stage.err
    assert (work / "results").read_text() == "not a folder"
