"""prepare-release on a small tar and zip made in the release's layout: checks, safe unpack, fix, verification."""
from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from harrison.cli import main
from harrison.stages.prepare_release import TAR_SIZE

GOOD = ["instagram_dataset/sea/image_1.jpg", "instagram_dataset/sea/image_2.png", "instagram_dataset/sun/image_99.jpg"]
CORRUPT = "instagram_dataset/food/image_7.jpg"
MISSING = "instagram_dataset/food/image_8.jpg"
REISSUED = "instagram_dataset/sun/image_99.jpg"


def _image_bytes(fmt: str, colour: tuple[int, int, int], size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def make_release(tmp_path: Path, top: str = "HARRISON/", extra: dict[str, bytes] | None = None) -> tuple[Path, Path]:
    """A tar like HARRISON_full.tar (lists + images under ``top``) and a zip like HARRISON_fixed.zip."""
    listed = GOOD + [CORRUPT, MISSING]
    files = {
        "data_list.txt": "".join(f"{name}\n" for name in listed).encode(),
        "tag_list.txt": b"sea \nsea blue \nsun \nfood \nfood \n",
        "vocab_index.txt": b"sea                   0\nsun                   1\nfood                  2\nblue                  3\n",
        GOOD[0]: _image_bytes("JPEG", (200, 30, 30)),
        GOOD[1]: _image_bytes("PNG", (30, 200, 30)),
        REISSUED: _image_bytes("JPEG", (9, 9, 9))[:60],  # the tar's copy is broken; the zip re-issues it
        CORRUPT: _image_bytes("JPEG", (1, 2, 3))[:50],
    }
    tar_path = tmp_path / "HARRISON_full.tar"
    with tarfile.open(tar_path, "w") as archive:
        for name, data in {**files, **(extra or {})}.items():
            _add(archive, top + name, data)
    zip_path = tmp_path / "HARRISON_fixed.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("fixed_images/" + REISSUED, _image_bytes("JPEG", (30, 30, 200)))
    return tar_path, zip_path


def prepare(tar: Path, fixed: Path, out: Path, *extra: str) -> int:
    return main(["prepare-release", "--tar", str(tar), "--fixed", str(fixed), "--out", str(out), "--no-size-check", *extra])


def test_unpacks_fixes_and_reports_bad_images(tmp_path, capsys):
    tar, fixed = make_release(tmp_path)
    out = tmp_path / "data"
    assert prepare(tar, fixed, out) == 1
    err = capsys.readouterr().err
    for name in ("data_list.txt", "tag_list.txt", "vocab_index.txt", *GOOD, CORRUPT):
        assert (out / name).is_file(), name
    assert not (out / "HARRISON").exists()
    with Image.open(out / REISSUED) as image:
        assert image.getpixel((0, 0))[2] > 150  # the zip's copy, not the tar's
    report = (out / "verify_report.tsv").read_text().splitlines()
    assert report[0] == "image\treason"
    rows = dict(line.split("\t") for line in report[1:])
    assert set(rows) == {CORRUPT, MISSING}
    assert rows[MISSING] == "file not found"
    assert "2 of 5 listed images" in err and CORRUPT in err and MISSING in err
    record = json.loads((out / "prepare.json").read_text())
    assert record["verify"]["images"] == 5 and record["verify"]["bad"] == 2


def test_rerun_skips_a_finished_unpack_and_resumes_an_interrupted_one(tmp_path, capsys):
    tar, fixed = make_release(tmp_path, top="")
    out = tmp_path / "data"
    prepare(tar, fixed, out)
    kept = out / GOOD[0]
    stamp = kept.stat().st_mtime_ns
    capsys.readouterr()
    prepare(tar, fixed, out)
    assert "already unpacked" in capsys.readouterr().err
    # an unpack interrupted before its record was written: present files are kept, missing ones written
    (out / "prepare.json").unlink()
    (out / GOOD[1]).unlink()
    os.utime(kept, ns=(stamp, stamp))
    prepare(tar, fixed, out)
    assert (out / GOOD[1]).is_file()
    assert kept.stat().st_mtime_ns == stamp
    assert not list(out.rglob("*.partial"))


def test_all_good_exits_zero_and_skips_verification_next_time(tmp_path, capsys):
    tar, fixed = make_release(tmp_path)
    out = tmp_path / "data"
    prepare(tar, fixed, out)
    (out / CORRUPT).write_bytes(_image_bytes("JPEG", (5, 5, 5)))
    (out / MISSING).write_bytes(_image_bytes("JPEG", (6, 6, 6)))
    assert prepare(tar, fixed, out) == 0
    assert "all 5 listed images exist and decode" in capsys.readouterr().err
    assert (out / "verify_report.tsv").read_text() == "image\treason\n"
    assert prepare(tar, fixed, out) == 0
    assert "verified before" in capsys.readouterr().err


@pytest.mark.parametrize("evil", ["../escape.txt", "/tmp/harrison-absolute.txt"])
def test_refuses_members_outside_the_folder(tmp_path, capsys, evil):
    tar, fixed = make_release(tmp_path, top="")
    with tarfile.open(tar, "a") as archive:
        info = tarfile.TarInfo(evil)
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    assert prepare(tar, fixed, tmp_path / "data") == 2
    assert "outside" in capsys.readouterr().err
    assert not (tmp_path / "escape.txt").exists()


def test_refuses_links(tmp_path, capsys):
    tar, fixed = make_release(tmp_path)
    with tarfile.open(tar, "a") as archive:
        info = tarfile.TarInfo("HARRISON/instagram_dataset/sea/link.jpg")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        archive.addfile(info)
    assert prepare(tar, fixed, tmp_path / "data") == 2
    assert "link" in capsys.readouterr().err


def test_checks_size_and_layout_before_unpacking(tmp_path, capsys):
    tar, fixed = make_release(tmp_path)
    out = tmp_path / "data"
    assert main(["prepare-release", "--tar", str(tar), "--fixed", str(fixed), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{TAR_SIZE:,}" in err and "incomplete" in err
    assert not out.exists()
    not_release = tmp_path / "other.tar"
    with tarfile.open(not_release, "w") as archive:
        _add(archive, "photos/a.jpg", _image_bytes("JPEG", (1, 1, 1)))
    assert prepare(not_release, fixed, out) == 2
    assert "not the HARRISON release" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "empty.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    assert prepare(tar, tmp_path / "empty.zip", out) == 2
    assert "no instagram_dataset/ images" in capsys.readouterr().err


def test_real_reissued_images_are_put_in_place(tmp_path, release_dir):
    """The two real re-issued images of the release go into place byte for byte and are checked as extraction reads them."""
    fixed_dir = release_dir / "fixed_images"
    tar, _ = make_release(tmp_path)
    fixed = tmp_path / "real_fixed.zip"
    with zipfile.ZipFile(fixed, "w") as archive:
        for path in sorted(fixed_dir.rglob("*.jpg")):
            archive.write(path, "fixed_images/" + path.relative_to(fixed_dir).as_posix())
    out = tmp_path / "data"
    prepare(tar, fixed, out)
    for path in fixed_dir.rglob("*.jpg"):
        relative = path.relative_to(fixed_dir)
        assert (out / relative).read_bytes() == path.read_bytes()
    with Image.open(out / "instagram_dataset/family/image_2411.jpg") as image:
        assert image.size == (480, 430)
    # both re-issued JPEGs end a few bytes early: Pillow's strict decoding (as extraction uses it) reports them
    bad = dict(line.split("\t") for line in (out / "verify_report.tsv").read_text().splitlines()[1:])
    assert bad[REISSUED].startswith("truncated image data")


def test_rerun_with_bad_images_reprints_the_recorded_verification(tmp_path, capsys, monkeypatch):
    """Bad images do not force a new verification: while data_list.txt and the images are unchanged, a rerun
    reprints the recorded bad list and exit status; a changed image is verified again."""
    tar, fixed = make_release(tmp_path)
    out = tmp_path / "data"
    assert prepare(tar, fixed, out) == 1
    first = capsys.readouterr().err
    decoded = []
    monkeypatch.setattr("harrison.stages.prepare_release._check", lambda path: decoded.append(path))
    assert prepare(tar, fixed, out) == 1
    err = capsys.readouterr().err
    assert not decoded and "verified before and are unchanged, skipped" in err
    assert "2 of 5 listed images" in err and f"{CORRUPT}: " in err and f"{MISSING}: file not found" in err
    assert [line for line in err.splitlines() if line.startswith("  ")] == [line for line in first.splitlines() if line.startswith("  ")]
    (out / MISSING).write_bytes(_image_bytes("JPEG", (6, 6, 6)))  # the unpacked state changed: verify again
    assert prepare(tar, fixed, out) == 0
    assert len(decoded) == 5 and "verified before" not in capsys.readouterr().err


def test_checks_the_number_of_listed_images(tmp_path, capsys, monkeypatch):
    tar, fixed = make_release(tmp_path)
    monkeypatch.setattr("harrison.stages.prepare_release.TAR_SIZE", tar.stat().st_size)
    out = tmp_path / "data"
    assert main(["prepare-release", "--tar", str(tar), "--fixed", str(fixed), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'data_list.txt'}: lists 5 images, but the HARRISON release lists 57,383" in err
    assert "--no-size-check" in err and not (out / "verify_report.tsv").exists()
