"""``harrison prepare-release``: check and unpack HARRISON_full.tar, apply HARRISON_fixed.zip, verify every image.

The release's tar holds ``data_list.txt``, ``tag_list.txt``, ``vocab_index.txt`` and ``instagram_dataset/<tag>/
image_N.jpg``, possibly under one leading folder; they are unpacked into ``--out`` without that folder, so that
``--out`` serves as both ``dataset.release`` and ``dataset.image_root``. The zip re-issues two images that the
tar holds corrupted (``fixed_images/instagram_dataset/...``); they replace the originals. Then every image that
data_list.txt names must exist and decode (as extraction decodes it); the ones that do not are listed with the
reason in ``<out>/verify_report.tsv`` and on screen.

Each member is written to a temporary name and renamed, so an interrupted unpack resumes where it stopped;
``<out>/prepare.json`` records each finished step, and a rerun skips the steps that are still current. The
verification counts as current while data_list.txt has the recorded checksum and every listed image the recorded
size and modification time; a rerun then reprints the recorded findings (the release always has two truncated
images) instead of decoding the 57,383 images again.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable

from tqdm import tqdm

from harrison.dataset.release import DATA_LIST, FILES
from harrison.errors import HarrisonError
from harrison.files import atomic_path, read_json, sha256, write_json, write_text
from harrison.images import ImageError, load_rgb

TAR_SIZE = 6_067_998_720
IMAGE_COUNT = 57_383
IMAGE_FOLDER = "instagram_dataset"
RECORD_NAME = "prepare.json"
REPORT_NAME = "verify_report.tsv"
BAD_SHOWN = 20
COPY_CHUNK = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tar", type=Path, required=True, help="HARRISON_full.tar (the torrent download)")
    parser.add_argument("--fixed", type=Path, required=True, help="HARRISON_fixed.zip (from the release repository)")
    parser.add_argument("--out", type=Path, required=True, help="folder to unpack into (becomes --data of reproduce_table1.sh)")
    parser.add_argument("--no-size-check", action="store_true",
                        help=f"accept a tar whose size is not {TAR_SIZE:,} bytes and a data_list.txt that does not list "
                             f"{IMAGE_COUNT:,} images (a tar of your own)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads for the check (default: CPU count, at most 8)")


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    record_path = out / RECORD_NAME
    record = read_json(record_path) if record_path.exists() else {}
    tar_id = _file_id(args.tar, None if args.no_size_check else TAR_SIZE)

    if record.get("unpack") == tar_id:
        print(f"{out}: {args.tar.name} already unpacked, skipped", file=sys.stderr)
    else:
        record.pop("verify", None)
        count = unpack_tar(args.tar, out)
        record["unpack"] = tar_id
        write_json(record_path, record)
        print(f"{out}: {count} files unpacked from {args.tar.name}", file=sys.stderr)

    fixed = apply_fixed(args.fixed, out)
    print(f"{out}: re-issued images in place: {', '.join(fixed)}", file=sys.stderr)
    fixed_id = {"zip": str(args.fixed.resolve()), "sha256": sha256(args.fixed)}
    if record.get("fixed") != fixed_id:
        record.pop("verify", None)
        record["fixed"] = fixed_id
        write_json(record_path, record)

    list_sha = sha256(out / DATA_LIST)
    images = read_data_list(out / DATA_LIST)
    if not args.no_size_check and len(images) != IMAGE_COUNT:
        raise HarrisonError(f"{out / DATA_LIST}: lists {len(images):,} images, but the HARRISON release lists {IMAGE_COUNT:,}; "
                            f"{args.tar} is not the complete release: download HARRISON_full.tar again "
                            "(or pass --no-size-check for a tar of your own)")
    state = images_state(out, images)
    verified = record.get("verify", {})
    if verified.get("data_list_sha256") == list_sha and verified.get("images_state") == state and "bad_images" in verified:
        print(f"{out}: the {len(images)} listed images were verified before and are unchanged, skipped", file=sys.stderr)
        return report(out, len(images), [(image, reason) for image, reason in verified["bad_images"]])
    bad = verify_images(out, images, workers=args.workers)
    write_text(out / REPORT_NAME, "image\treason\n" + "".join(f"{image}\t{reason}\n" for image, reason in bad))
    record["verify"] = {"data_list_sha256": list_sha, "images_state": state, "images": len(images), "bad": len(bad),
                        "bad_images": [list(pair) for pair in bad]}
    write_json(record_path, record)
    return report(out, len(images), bad)


def report(out: Path, count: int, bad: list[tuple[str, str]]) -> int:
    """Say what the verification found (the bad images, the first few on screen); exit status 0 or 1."""
    if not bad:
        print(f"{out}: all {count} listed images exist and decode; use --data {out}", file=sys.stderr)
        return 0
    print(f"{out}: {len(bad)} of {count} listed images are missing or do not decode "
          f"(all listed in {out / REPORT_NAME}):", file=sys.stderr)
    for image, reason in bad[:BAD_SHOWN]:
        print(f"  {image}: {reason}", file=sys.stderr)
    if len(bad) > BAD_SHOWN:
        print(f"  ... and {len(bad) - BAD_SHOWN} more", file=sys.stderr)
    print("re-download the damaged files, or let extraction zero-fill or skip them (harrison extract --on-bad-image)",
          file=sys.stderr)
    return 1


def images_state(root: Path, images: list[str]) -> str:
    """A digest of each listed image's size and modification time (or absence): what a verification depends on."""
    digest = hashlib.sha256()
    for image in images:
        try:
            stat = (root / image).stat()
            digest.update(f"{image}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode("utf-8"))
        except FileNotFoundError:
            digest.update(f"{image}\t-\n".encode("utf-8"))
    return digest.hexdigest()


def _file_id(path: Path, expected_size: int | None) -> dict[str, object]:
    """Name, size and modification time of ``path``; an error when it is missing or (with a size) incomplete."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise HarrisonError(f"{path}: not found; pass the downloaded HARRISON_full.tar with --tar") from None
    if expected_size is not None and stat.st_size != expected_size:
        raise HarrisonError(
            f"{path}: {stat.st_size:,} bytes, but HARRISON_full.tar has {expected_size:,}; the download is incomplete or "
            "another file: finish the torrent (or pass --no-size-check for a tar of your own)"
        )
    return {"tar": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def release_prefix(names: Iterable[str], archive: Path) -> PurePosixPath:
    """The folder of the tar that holds the three lists and ``instagram_dataset/`` (``.`` or one leading folder)."""
    names = {PurePosixPath(name) for name in names}
    for prefix in (PurePosixPath("."), *sorted({name.parent for name in names if name.name == DATA_LIST})):
        if all(prefix / name in names for name in FILES) and any(
            name.parts[: len(prefix.parts) + 1] == (*prefix.parts, IMAGE_FOLDER) for name in names
        ):
            return prefix
    raise HarrisonError(
        f"{archive}: not the HARRISON release: expected {', '.join(FILES)} and {IMAGE_FOLDER}/ together in one folder; "
        "pass the HARRISON_full.tar of the torrent"
    )


def safe_target(out: Path, relative: PurePosixPath, archive: Path, member: str) -> Path:
    """``out / relative``, or an error when the member's path is absolute or climbs out of ``out``."""
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise HarrisonError(f"{archive}: member {member!r} would be written outside {out}; the archive is not safe to unpack")
    return out.joinpath(*relative.parts)


def unpack_tar(tar_path: Path, out: Path) -> int:
    """Unpack the release's regular files into ``out`` (without the leading folder); return how many files it holds.

    Files already present with the member's size are kept (an interrupted unpack resumes); each new file is
    written under a temporary name and renamed. Links, devices and paths outside ``out`` are refused.
    """
    try:
        archive = tarfile.open(tar_path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise HarrisonError(f"{tar_path}: not a readable tar file ({exc}); pass the HARRISON_full.tar of the torrent") from None
    with archive:
        try:
            members = archive.getmembers()
        except tarfile.TarError as exc:
            raise HarrisonError(f"{tar_path}: the tar is damaged ({exc}); download it again") from None
        prefix = release_prefix((m.name for m in members if m.isfile()), tar_path)
        files = []
        for member in members:
            name = PurePosixPath(member.name)
            if prefix.parts and name.parts[: len(prefix.parts)] != prefix.parts:
                continue
            if not (member.isfile() or member.isdir()):
                raise HarrisonError(f"{tar_path}: member {member.name!r} is a link or device; the archive is not safe to unpack")
            target = safe_target(out, PurePosixPath(*name.parts[len(prefix.parts):]), tar_path, member.name)
            if member.isfile():
                files.append((member, target))
        total = sum(member.size for member, _ in files)
        with tqdm(total=total, unit="B", unit_scale=True, desc="unpack", file=sys.stderr) as bar:
            for member, target in files:
                if not (target.is_file() and target.stat().st_size == member.size):
                    _extract(archive, member, target)
                bar.update(member.size)
    return len(files)


def _extract(archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = archive.extractfile(member)
    assert source is not None  # a regular file
    with source, atomic_path(target) as tmp, open(tmp, "wb") as sink:
        while block := source.read(COPY_CHUNK):
            sink.write(block)


def apply_fixed(zip_path: Path, out: Path) -> list[str]:
    """Put the images of HARRISON_fixed.zip in place (``.../instagram_dataset/<tag>/<file>`` -> ``out/instagram_dataset/...``)."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise HarrisonError(f"{zip_path}: not found; pass the release repository's HARRISON_fixed.zip with --fixed") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise HarrisonError(f"{zip_path}: not a readable zip file ({exc}); download HARRISON_fixed.zip again") from None
    placed = []
    with archive:
        for info in archive.infolist():
            parts = PurePosixPath(info.filename).parts
            if info.is_dir() or IMAGE_FOLDER not in parts:
                continue
            relative = PurePosixPath(*parts[parts.index(IMAGE_FOLDER):])
            target = safe_target(out, relative, zip_path, info.filename)
            data = archive.read(info)
            if not (target.is_file() and target.read_bytes() == data):
                with atomic_path(target) as tmp:
                    tmp.write_bytes(data)
            placed.append(str(relative))
    if not placed:
        raise HarrisonError(f"{zip_path}: holds no {IMAGE_FOLDER}/ images; pass the release repository's HARRISON_fixed.zip")
    return placed


def read_data_list(path: Path) -> list[str]:
    """The image paths of data_list.txt, in order (blank lines ignored)."""
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise HarrisonError(f"{path}: not found after unpacking; the tar is not the HARRISON release") from None


def _check(path: Path) -> str | None:
    try:
        load_rgb(path)
    except ImageError as exc:
        return exc.reason
    return None


def verify_images(root: Path, images: list[str], workers: int | None = None) -> list[tuple[str, str]]:
    """(image, reason) for every listed image under ``root`` that is missing or does not decode, in list order."""
    workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(tqdm(pool.map(_check, (root / image for image in images), chunksize=16),
                            total=len(images), unit="img", desc="verify", file=sys.stderr))
    return [(image, reason) for image, reason in zip(images, reasons) if reason is not None]
