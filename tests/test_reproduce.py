"""The README's main command, scripts/reproduce_table1.sh, end to end on the demo with real Caffe (engine auto), then
rerun after a solver edit: only the edited model is trained and evaluated again, every other stage skips itself."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harrison.config import PROJECT_ROOT

pytestmark = [pytest.mark.caffe, pytest.mark.slow]
SCRIPT = PROJECT_ROOT / "scripts" / "reproduce_table1.sh"
DEMO_CLASSIFIER = PROJECT_ROOT / "prototxt" / "demo" / "classifier"


def reproduce(cwd: Path, *args: str) -> str:
    """Run the script from ``cwd``; its stdout and stderr together, after checking it succeeded."""
    done = subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def test_reproduce_then_rerun_after_a_solver_edit(tmp_path, caffe_engine):
    run = tmp_path / "run"
    reproduce(tmp_path, "--workdir", "run")
    results = run / "results"
    for name in ("table1.md", "table1.csv", "table1.json", "report/index.html"):
        assert (results / name).is_file(), name
    rows = [line for line in (results / "table1.md").read_text().splitlines() if line.startswith("| VGG")]
    assert len(rows) == 3 and all("–" not in row for row in rows)

    # the object model's solver, copied with another base_lr, in a copy of the demo config
    proto = tmp_path / "proto"
    proto.mkdir()
    solver = (DEMO_CLASSIFIER / "solver_object.prototxt").read_text()
    assert "\nbase_lr: 0.5\n" in solver
    (proto / "solver_object.prototxt").write_text(solver.replace("\nbase_lr: 0.5\n", "\nbase_lr: 0.4\n"))
    (proto / "train_test.prototxt").write_text((DEMO_CLASSIFIER / "train_test.prototxt").read_text())
    subprocess.run([str(PROJECT_ROOT / ".venv" / "bin" / "python"), "-m", "harrison.config",
                    str(PROJECT_ROOT / "configs" / "demo.yaml"), str(tmp_path / "edited.yaml"),
                    "--set", f"models.object.solver={proto / 'solver_object.prototxt'}"], check=True, capture_output=True)
    metrics = {model: run / "eval" / model / "metrics.json" for model in ("object", "scene", "object_scene")}
    before = {model: path.stat().st_mtime_ns for model, path in metrics.items()}

    output = reproduce(tmp_path, "--config", "edited.yaml", "--workdir", "run")
    assert f"{run}/dataset: current, nothing to do" in output
    assert f"{run}/weights/object.caffemodel is current" in output and f"{run}/weights/scene.caffemodel is current" in output
    for feature in ("object", "scene"):
        for split in ("train", "test"):
            assert f"{run}/features/{feature}/{split}.h5: up to date, skipped" in output
    for model in ("scene", "object_scene"):
        assert f"{run}/models/{model}: trained and current, skipped" in output
        assert f"{run}/eval/{model}: up to date, skipped" in output
        assert metrics[model].stat().st_mtime_ns == before[model]
    assert f"object: {run}/models/object/snapshots/object_iter_1200.caffemodel after 1200 iterations" in output
    assert f"{run}/models/object: trained" not in output and f"{run}/eval/object: up to date" not in output
    assert "base_lr: 0.4" in (run / "models" / "object" / "solver.prototxt").read_text()
    assert metrics["object"].stat().st_mtime_ns > before["object"]
