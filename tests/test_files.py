"""Atomic writes and manifests: nothing partial is left, and current stages are recognised."""
from __future__ import annotations

import os

import pytest

from harrison.errors import HarrisonError
from harrison.files import atomic_path, read_json, write_json
from harrison.manifest import is_current, write_manifest


def test_atomic_path_keeps_old_file_when_the_block_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "deep" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_unwritable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HarrisonError, match="cannot write"):
        write_json(blocker / "x.json", {})


def test_read_json_names_the_line_of_bad_json(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(HarrisonError, match=r"m\.json:3: malformed JSON"):
        read_json(bad)


def test_manifest_current_until_an_input_or_output_or_setting_changes(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("a")
    output = tmp_path / "out.txt"
    output.write_text("b")
    write_manifest(tmp_path, "demo", inputs=[source], outputs=[output], settings={"k": 5})
    assert is_current(tmp_path, inputs=[source], settings={"k": 5})
    assert not is_current(tmp_path, inputs=[source], settings={"k": 3})
    output.write_text("changed")
    assert not is_current(tmp_path, inputs=[source], settings={"k": 5})
    output.write_text("b")
    source.write_text("changed")
    assert not is_current(tmp_path, inputs=[source], settings={"k": 5})


def test_atomic_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
