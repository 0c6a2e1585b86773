"""The demo through real Caffe, stage by stage: extraction of both demo nets (resumed after SIGTERM, sharded, with a bad
image), training of the three classifiers (skipped when current, resumed from a .solverstate) and evaluation to a
three-row Table 1. ``run_chain`` is shared with tests/test_stages_torch.py."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from harrison.cli import main
from harrison.config import PROJECT_ROOT
from harrison.lmdb_io import read_imageset

pytestmark = [pytest.mark.caffe, pytest.mark.slow]
MODELS = ("object", "scene", "object_scene")


def harrison(*args: str) -> None:
    """Run a stage in this process; fail the test on a non-zero exit."""
    assert main(list(args)) == 0, f"harrison {' '.join(args)} failed"


def prepare(workdir: Path, engine) -> None:
    """The demo data, its dataset in ``workdir`` and the demo nets' weights."""
    harrison("make-demo")
    harrison("build-dataset", "--workdir", str(workdir))
    harrison("make-weights", "--workdir", str(workdir), "--engine", engine.name)


def run_chain(workdir: Path, engine) -> None:
    """Extract, train, evaluate and tabulate the demo with ``engine``."""
    prepare(workdir, engine)
    for stage in ("extract", "train", "evaluate"):
        harrison(stage, "--workdir", str(workdir), "--engine", engine.name)
    harrison("table", "--workdir", str(workdir))


def check_chain(workdir: Path) -> None:
    """What the chain must leave: features, trained models, metrics and a three-row Table 1."""
    info = json.loads((workdir / "dataset" / "manifest.json").read_text())
    counts = {split: len((workdir / "dataset" / f"{split}.tsv").read_text().splitlines()) - 1 for split in ("train", "test")}
    for feature in ("object", "scene"):
        for split, count in counts.items():
            with h5py.File(workdir / "features" / feature / f"{split}.h5", "r") as handle:
                assert handle["features"].shape == (count, 128) and handle["features"].dtype == np.float32
                assert np.isfinite(handle["features"][:]).all() and handle["features"][:].std() > 0
                assert handle.attrs["blob"] == "fc7" and len(handle.attrs["weights_sha256"]) == 64
        manifest = json.loads((workdir / "features" / feature / "manifest.json").read_text())
        assert manifest["splits"]["train"]["bad_images"] == []
    for model in MODELS:
        folder = workdir / "models" / model
        assert json.loads((folder / "manifest.json").read_text())["status"] == "done"
        assert (folder / "loss.png").stat().st_size > 0
        rows = (folder / "loss.csv").read_text().splitlines()
        losses = [float(r.split(",")[3]) for r in rows[1:] if r.startswith("train,") and ",loss," in r]
        assert len(losses) > 5 and losses[-1] < losses[0]
        metrics = json.loads((workdir / "eval" / model / "metrics.json").read_text())
        assert metrics["images"] == counts["test"]
        assert all(0.0 <= metrics[key] <= 1.0 for key in ("precision@1", "recall@5", "accuracy@5"))
        assert metrics["accuracy@5"] >= metrics["precision@1"] > 0
        with h5py.File(workdir / "eval" / model / "scores.h5", "r") as handle:
            assert handle["scores"].shape == (counts["test"], info["num_classes"])
    table = (workdir / "results" / "table1.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| VGG")]
    assert len(rows) == 3 and all("–" not in row for row in rows)
    assert json.loads((workdir / "results" / "table1.json").read_text())["rows"]["object_scene"]["metrics"]["precision@1"]["ours"] > 0


def copy_inputs(source: Path, target: Path) -> Path:
    """A second run folder with the same dataset and weights."""
    for name in ("dataset", "weights"):
        shutil.copytree(source / name, target / name)
    return target


def interrupted_extraction_resumes(workdir: Path, tmp: Path, engine_name: str) -> None:
    """SIGTERM an extraction of the train split once a batch is done; the rerun resumes and equals the uninterrupted file."""
    second = copy_inputs(workdir, tmp / "interrupted")
    command = [sys.executable, "-m", "harrison.cli", "extract", "--workdir", str(second), "--engine", engine_name,
               "--feature", "object", "--split", "train", "--batch-size", "32"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    final = second / "features" / "object" / "train.h5"
    seen = ""
    while (char := process.stderr.read(1)):
        seen += char
        if any(32 <= int(done) < int(total) for done, total in re.findall(r"\b(\d+)/(\d+) \[", seen)):
            process.send_signal(signal.SIGSTOP)  # hold it while the test looks: it must still be mid-run
            assert not final.exists(), "the extraction finished before it could be stopped"
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)
            break
    seen += process.stderr.read()
    assert process.wait(timeout=120) == 130, seen
    partial = final.with_name("train.h5.partial")
    assert partial.exists() and not final.exists()
    harrison("extract", "--workdir", str(second), "--engine", engine_name, "--feature", "object", "--split", "train")
    with h5py.File(workdir / "features" / "object" / "train.h5", "r") as a, h5py.File(final, "r") as b:
        assert np.array_equal(a["features"][:], b["features"][:])
        assert list(a["image"][:]) == list(b["image"][:])


@pytest.fixture(scope="module")
def chain(tmp_path_factory, caffe_engine):
    workdir = tmp_path_factory.mktemp("caffe") / "run"
    run_chain(workdir, caffe_engine)
    return workdir


def test_demo_chain_through_real_caffe(chain):
    check_chain(chain)
    assert json.loads((chain / "models" / "object" / "manifest.json").read_text())["engine"]["engine"] == "caffe"


def test_interrupted_extraction_resumes_to_the_same_file(chain, tmp_path):
    interrupted_extraction_resumes(chain, tmp_path, "caffe")


def test_shards_merge_to_the_unsharded_file(chain, tmp_path):
    second = copy_inputs(chain, tmp_path / "sharded")
    for shard in ("1/3", "2/3", "3/3"):
        harrison("extract", "--workdir", str(second), "--engine", "caffe", "--feature", "scene", "--split", "test",
                 "--batch-size", "32", "--shard", shard)
    harrison("merge-features", "--workdir", str(second), "--feature", "scene", "--split", "test")
    with h5py.File(chain / "features" / "scene" / "test.h5", "r") as a, h5py.File(second / "features" / "scene" / "test.h5", "r") as b:
        assert np.array_equal(a["features"][:], b["features"][:]) and list(a["image"][:]) == list(b["image"][:])


def test_a_bad_image_is_reported_zero_filled_and_left_out_of_the_lmdb(chain, tmp_path, release_dir):
    second = copy_inputs(chain, tmp_path / "bad")
    manifest_path = second / "dataset" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    images = tmp_path / "images"
    shutil.copytree(manifest["image_root"], images)
    first = (second / "dataset" / "test.tsv").read_text().splitlines()[1].split("\t")[0]
    shutil.copyfile(release_dir / "fixed_images" / "instagram_dataset" / "family" / "image_2411.jpg", images / first)
    manifest["image_root"] = str(images)
    manifest_path.write_text(json.dumps(manifest))
    harrison("extract", "--workdir", str(second), "--engine", "caffe", "--feature", "object", "--split", "test", "--lmdb")
    records = list(read_imageset(second / "features" / "object" / "test_lmdb"))
    assert len(records) == 99 and records[0][0].startswith("00000001_") and records[0][1].shape == (3, 64, 64)
    with h5py.File(second / "features" / "object" / "test.h5", "r") as bad, h5py.File(chain / "features" / "object" / "test.h5", "r") as good:
        assert np.all(bad["features"][0] == 0)
        assert np.array_equal(bad["features"][1:], good["features"][1:])
    recorded = json.loads((second / "features" / "object" / "manifest.json").read_text())["splits"]["test"]["bad_images"]
    assert len(recorded) == 1 and recorded[0][0] == first and "truncated" in recorded[0][1]


def test_training_skips_when_current_and_resumes_from_a_solverstate(chain, capsys):
    harrison("train", "--workdir", str(chain), "--engine", "caffe", "--model", "scene")
    assert "trained and current, skipped" in capsys.readouterr().err
    folder = chain / "models" / "scene"
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["status"] = "running"
    manifest["outputs"] = {}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    final = sorted(folder.glob("snapshots/scene_iter_*.solverstate"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))[-1]
    for path in folder.glob(f"snapshots/{final.stem}.*"):
        path.unlink()
    harrison("train", "--workdir", str(chain), "--engine", "caffe", "--model", "scene")
    assert "resuming from scene_iter_" in capsys.readouterr().err
    assert "Resuming from" in (folder / "train.log").read_text()
    assert json.loads((folder / "manifest.json").read_text())["status"] == "done"
    assert (folder / "snapshots" / f"{final.stem}.caffemodel").exists()
