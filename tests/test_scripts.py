"""The shell scripts as a user types them: from any folder, with paths relative to that folder."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from harrison.config import PROJECT_ROOT
from tests.test_prepare_release import CORRUPT, MISSING, make_release

SCRIPTS = PROJECT_ROOT / "scripts"


def script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run scripts/<name> with ``args`` from ``cwd``."""
    if not (PROJECT_ROOT / ".venv" / "bin" / "harrison").exists():
        pytest.skip("the scripts call .venv/bin/harrison; run scripts/setup.sh")
    return subprocess.run(["bash", str(SCRIPTS / name), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_prepare_harrison_takes_the_readme_options_and_relative_paths(tmp_path):
    readme = (PROJECT_ROOT / "README.md").read_text()
    line = re.search(r"scripts/prepare_harrison\.sh (--tar [^\s`]+ --fixed [^\s`]+ --out [^\s`]+)", readme)
    assert line, "README's prepare_harrison.sh line"
    make_release(tmp_path)
    args = line.group(1).replace("data/HARRISON", "unpacked").split() + ["--no-size-check"]
    done = script("prepare_harrison.sh", *args, cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # the small release has a damaged and a missing image
    report = (tmp_path / "unpacked" / "verify_report.tsv").read_text()
    assert CORRUPT in report and MISSING in report


def test_every_stage_script_runs_from_another_folder(tmp_path, release_dir):
    relative = Path(os.path.relpath(release_dir, tmp_path))
    done = script("build_dataset.sh", "--release", str(relative), "--out", "dataset", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "dataset" / "vocab.tsv").is_file()
    for name in ("extract_features.sh", "merge_features.sh", "train.sh", "evaluate.sh", "table.sh", "report.sh",
                 "recommend.sh", "make_weights.sh"):
        done = script(name, "--help", cwd=tmp_path)
        assert done.returncode == 0 and done.stdout.startswith("usage: harrison "), (name, done.stderr)
