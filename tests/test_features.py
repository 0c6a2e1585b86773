"""Feature files: resume after an exception or SIGKILL equals an uninterrupted run; shards merge to the unsharded file;
bad images are zero-filled, skipped or fatal. The net here is a fixed linear map (the file logic is under test;
tests/test_stages_*.py run the real engines)."""
from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from PIL import Image

from harrison.cli import main
from harrison.errors import HarrisonError
from harrison.features import (
    RESERVE_FIXED,
    Shard,
    extract,
    find_shards,
    is_current,
    merge,
    partial_path,
    read_bad,
    read_identity,
    read_images,
)
from harrison.images import ImageError, PreprocessSpec

SPEC = PreprocessSpec(input_blob="data", input_size=(8, 8), raw_scale=255.0,
                      mean=np.array([100.0, 110.0, 120.0], dtype=np.float32).reshape(3, 1, 1), feature_blob="fc7")
IDENTITY = {"net_sha256": "n", "weights_sha256": "w", "preprocess_sha256": "p", "list_sha256": "l", "blob": "fc7", "on_bad_image": "zero"}
WEIGHTS = np.random.default_rng(3).standard_normal((3 * 8 * 8, 6)).astype(np.float32)


def linear(batch: np.ndarray) -> np.ndarray:
    return batch.reshape(len(batch), -1) @ WEIGHTS


@pytest.fixture()
def images(tmp_path):
    """23 small images of different sizes and modes, one corrupt file at row 5."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    names = []
    for i in range(23):
        name = f"img_{i:02d}.png"
        if i == 5:
            (folder / name).write_bytes(b"not an image")
        else:
            pixels = rng.integers(0, 256, size=(10 + i, 12 + 2 * i, 3), dtype=np.uint8)
            Image.fromarray(pixels).convert("L" if i % 4 == 0 else "RGB").save(folder / name)
        names.append(name)
    return [folder / n for n in names], names


def read(path):
    with h5py.File(path, "r") as handle:
        return handle["features"][:], [v.decode() for v in handle["image"][:]]


def test_uninterrupted_run_writes_rows_names_and_attributes(images, tmp_path):
    paths, names = images
    out = tmp_path / "f" / "train.h5"
    result = extract(linear, SPEC, paths, names, out, IDENTITY, batch_size=4)
    features, stored = read(out)
    assert features.shape == (23, 6) and features.dtype == np.float32
    assert stored == names
    assert result.bad == [("img_05.png", "not an image Pillow can read")]
    assert np.all(features[5] == 0) and np.all(np.abs(features[[0, 4, 6]]).sum(axis=1) > 0)
    assert read_identity(out) == IDENTITY and is_current(out, IDENTITY)
    assert not is_current(out, {**IDENTITY, "weights_sha256": "other"})
    assert not partial_path(out).exists()
    assert read_bad(out) == result.bad


def test_resume_after_an_exception_equals_an_uninterrupted_run(images, tmp_path):
    paths, names = images
    reference, _ = read(extract(linear, SPEC, paths, names, tmp_path / "a.h5", IDENTITY, batch_size=4).path)
    calls = []

    def failing(batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return linear(batch)

    out = tmp_path / "b.h5"
    with pytest.raises(KeyboardInterrupt):
        extract(failing, SPEC, paths, names, out, IDENTITY, batch_size=4)
    assert not out.exists()
    with h5py.File(partial_path(out), "r") as handle:
        assert handle.attrs["done"] == 8
    seen = []
    result = extract(lambda b: seen.append(len(b)) or linear(b), SPEC, paths, names, out, IDENTITY, batch_size=4)
    assert result.resumed_at == 8 and sum(seen) == 23 - 8
    features, stored = read(out)
    assert np.array_equal(features, reference) and stored == names


def test_resume_after_sigkill_equals_an_uninterrupted_run(images, tmp_path):
    paths, names = images
    reference, _ = read(extract(linear, SPEC, paths, names, tmp_path / "a.h5", IDENTITY, batch_size=4).path)
    out = tmp_path / "killed.h5"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import numpy as np
        from pathlib import Path
        from harrison.features import extract
        from test_features_helper import SPEC, IDENTITY, linear
        paths = {[str(p) for p in paths]!r}
        calls = []
        def forward(batch):
            calls.append(1)
            if len(calls) == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return linear(batch)
        extract(forward, SPEC, paths, {names!r}, Path({str(out)!r}), IDENTITY, batch_size=4)
    """)
    helper = tmp_path / "test_features_helper.py"
    helper.write_text(
        "import numpy as np\n"
        "from harrison.images import PreprocessSpec\n"
        f"SPEC = PreprocessSpec('data', (8, 8), 255.0, np.array([100.0, 110.0, 120.0], dtype=np.float32).reshape(3, 1, 1), 'fc7')\n"
        f"IDENTITY = {IDENTITY!r}\n"
        "WEIGHTS = np.random.default_rng(3).standard_normal((3 * 8 * 8, 6)).astype(np.float32)\n"
        "def linear(batch):\n    return batch.reshape(len(batch), -1) @ WEIGHTS\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    assert partial_path(out).exists() and not out.exists()
    result = extract(linear, SPEC, paths, names, out, IDENTITY, batch_size=4)
    assert result.resumed_at == 12
    features, stored = read(out)
    assert np.array_equal(features, reference) and stored == names


def test_a_partial_from_other_inputs_is_restarted(images, tmp_path):
    paths, names = images
    out = tmp_path / "c.h5"
    with pytest.raises(RuntimeError):
        extract(lambda b: (_ for _ in ()).throw(RuntimeError("stop")), SPEC, paths, names, out, IDENTITY, batch_size=4)
    other = {**IDENTITY, "weights_sha256": "new"}
    result = extract(linear, SPEC, paths, names, out, other, batch_size=4)
    assert result.resumed_at == 0 and read_identity(out) == other


@pytest.mark.parametrize("total, batch, count", [(23, 4, 1), (23, 4, 3), (23, 4, 7), (100, 32, 3), (320, 32, 3), (64, 32, 3)])
def test_shards_tile_the_list_in_whole_batches_spread_evenly(total, batch, count):
    ranges = [Shard(k, count).rows(total, batch) for k in range(1, count + 1)]
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(start % batch == 0 or start == total for start, _ in ranges)
    batches = [-(-(stop - start) // batch) for start, stop in ranges]
    assert max(batches) - min(batches) <= 1
    assert all(batches) or -(-total // batch) < count  # empty only with fewer batches than shards


def test_shards_of_100_rows_in_batches_of_32():
    assert [Shard(k, 3).rows(100, 32) for k in (1, 2, 3)] == [(0, 32), (32, 64), (64, 100)]


def test_shard_parse_rejects_nonsense():
    assert Shard.parse("2/4") == Shard(2, 4)
    for text in ("0/4", "5/4", "a/b", "3"):
        with pytest.raises(HarrisonError):
            Shard.parse(text)


@pytest.mark.parametrize("text", ["0/3", "4/3", "x/2", "2"])
def test_bad_shard_on_the_command_line_is_a_usage_error(text, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["extract", "--shard", text])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --shard: expected K/N with 1 <= K <= N (e.g. 2/4), found {text!r}" in err
    assert "Traceback" not in err


def test_merged_shards_equal_the_unsharded_file(images, tmp_path):
    paths, names = images
    whole, whole_names = read(extract(linear, SPEC, paths, names, tmp_path / "whole" / "train.h5", IDENTITY, batch_size=4).path)
    folder = tmp_path / "sharded"
    for k in (1, 2, 3):
        shard = Shard(k, 3)
        extract(linear, SPEC, paths, names, folder / f"train.shard{k}-of-3.h5", IDENTITY, batch_size=4, rows=shard.rows(23, 4))
    shards = find_shards(folder, "train")
    assert [p.name for p in shards] == ["train.shard1-of-3.h5", "train.shard2-of-3.h5", "train.shard3-of-3.h5"]
    assert merge(shards, folder / "train.h5") == 23
    merged, merged_names = read(folder / "train.h5")
    assert np.array_equal(merged, whole) and merged_names == whole_names
    assert read_identity(folder / "train.h5") == IDENTITY
    assert read_bad(folder / "train.h5") == [("img_05.png", "not an image Pillow can read")]


def test_merge_refuses_shards_from_different_weights_or_a_missing_shard(images, tmp_path):
    paths, names = images
    folder = tmp_path / "mixed"
    extract(linear, SPEC, paths, names, folder / "train.shard1-of-2.h5", IDENTITY, batch_size=4, rows=Shard(1, 2).rows(23, 4))
    with pytest.raises(HarrisonError, match="shards 2 of 2"):
        find_shards(folder, "train")
    extract(linear, SPEC, paths, names, folder / "train.shard2-of-2.h5", {**IDENTITY, "weights_sha256": "x"},
            batch_size=4, rows=Shard(2, 2).rows(23, 4))
    with pytest.raises(HarrisonError, match="weights_sha256"):
        merge(find_shards(folder, "train"), folder / "train.h5")
    assert not (folder / "train.h5").exists()


def test_bad_images_skip_leaves_rows_out_and_fail_stops(images, tmp_path):
    paths, names = images
    skipped = extract(linear, SPEC, paths, names, tmp_path / "s.h5", {**IDENTITY, "on_bad_image": "skip"}, batch_size=4)
    features, stored = read(skipped.path)
    zeroed, _ = read(extract(linear, SPEC, paths, names, tmp_path / "z.h5", IDENTITY, batch_size=4).path)
    assert stored == names[:5] + names[6:] and read_images(skipped.path) == stored
    assert np.array_equal(features, np.delete(zeroed, 5, axis=0))
    with pytest.raises(ImageError, match="img_05.png"):
        extract(linear, SPEC, paths, names, tmp_path / "f.h5", {**IDENTITY, "on_bad_image": "fail"}, batch_size=4)


def test_a_full_disk_is_a_clear_error_and_the_rows_written_are_kept(images, tmp_path, monkeypatch):
    paths, names = images
    reference, _ = read(extract(linear, SPEC, paths, names, tmp_path / "a.h5", IDENTITY, batch_size=4).path)
    real_write = h5py.Dataset.__setitem__
    writes = []

    def full_after_two_batches(dataset, key, value):
        if dataset.name == "/features":
            writes.append(key)
            if len(writes) > 2:
                raise OSError(28, "No space left on device")
        return real_write(dataset, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full_after_two_batches)
    out = tmp_path / "full.h5"
    with pytest.raises(HarrisonError, match="disk full.*rows before 8 are kept"):
        extract(linear, SPEC, paths, names, out, IDENTITY, batch_size=4)
    monkeypatch.undo()
    result = extract(linear, SPEC, paths, names, out, IDENTITY, batch_size=4)
    assert result.resumed_at == 8 and np.array_equal(read(out)[0], reference)


def test_a_file_size_limit_is_a_clear_error_before_hdf5_writes_and_leaves_nothing(images, tmp_path):
    """The partial file's space is reserved up front: a limit that cannot hold it fails cleanly (HDF5 itself would
    crash closing a file whose write failed); without the limit the run completes and the reserve is given back."""
    paths, names = images
    out = tmp_path / "f" / "limited.h5"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(HarrisonError, match=r"limited\.h5\.partial: File too large .*disk is full or a file-size limit"):
            # 12000 values a row: the features need more than the limit
            extract(lambda b: np.tile(linear(b), (1, 2000)), SPEC, paths, names, out, IDENTITY, batch_size=4)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(out.parent.iterdir()) == []
    extract(linear, SPEC, paths, names, out, IDENTITY, batch_size=4)
    assert out.stat().st_size < 23 * 6 * 4 + RESERVE_FIXED // 2


def test_no_space_for_the_compacted_file_keeps_the_finished_rows(images, tmp_path, monkeypatch):
    """With on_bad_image=skip the finished rows are copied into a compact file; no room for it is a clear error
    and the rerun only compacts again."""
    paths, names = images
    identity = {**IDENTITY, "on_bad_image": "skip"}
    reference, reference_names = read(extract(linear, SPEC, paths, names, tmp_path / "a.h5", identity, batch_size=4).path)
    real_fallocate = os.posix_fallocate

    def full_for_the_compact_file(fd, offset, length):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".compact"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fallocate(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", full_for_the_compact_file)
    out = tmp_path / "b.h5"
    with pytest.raises(HarrisonError, match=r"b\.h5\.partial\.compact: No space left on device .*the disk is full"):
        extract(linear, SPEC, paths, names, out, identity, batch_size=4)
    monkeypatch.undo()
    assert [path.name for path in tmp_path.glob("b.h5*")] == ["b.h5.partial"]
    result = extract(linear, SPEC, paths, names, out, identity, batch_size=4)
    assert result.resumed_at == 23 and result.rows == 22
    features, stored = read(out)
    assert np.array_equal(features, reference) and stored == reference_names
