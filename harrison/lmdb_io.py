"""Images as an LMDB of Caffe ``Datum`` records, laid out as Caffe's ``convert_imageset`` writes them.

Each record's key is ``%08d_<path>`` (the line number in the list, then the path as listed); its value a
``Datum`` with ``channels``, ``height``, ``width``, ``label`` and ``data``: the pixels as uint8 in C x H x W
order with channels in BGR order (what OpenCV's ``imread`` gives convert_imageset). Transactions are committed
every 1,000 records. Caffe's ``Data`` layer reads such a database (``backend: LMDB``).

Differences from convert_imageset: images are decoded by Pillow (``harrison.images.load_rgb``: EXIF orientation
applied) and, when a size is given, resized as pycaffe does (``harrison.images.resize``) rather than with
OpenCV's ``INTER_LINEAR``.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator, Sequence

import lmdb
import numpy as np
from tqdm import tqdm

from harrison.errors import HarrisonError
from harrison.images import ImageError, load_rgb, resize
from harrison.proto import caffe_pb2

COMMIT_EVERY = 1000
MAP_SIZE = 1 << 40
"""Caffe's own LMDB map size (1 TB of address space; the file grows only as records are added)."""


@dataclasses.dataclass
class ImagesetResult:
    """What ``write_imageset`` wrote: the record count and the images it skipped, with reasons."""

    path: Path
    records: int
    bad: list[tuple[str, str]]


def image_to_datum(rgb: np.ndarray, label: int = 0) -> caffe_pb2.Datum:
    """An H x W x 3 RGB float image in [0, 1] as a Datum (uint8, C x H x W, BGR)."""
    pixels = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    chw = np.ascontiguousarray(pixels[:, :, ::-1].transpose(2, 0, 1))
    datum = caffe_pb2.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2], label=int(label))
    datum.data = chw.tobytes()
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """A Datum's pixels as a C x H x W array (uint8 from ``data``, float32 from ``float_data``)."""
    shape = (datum.channels, datum.height, datum.width)
    if datum.encoded:
        raise HarrisonError("encoded Datum records (convert_imageset --encoded) are not supported; write raw pixels")
    if datum.data:
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


def write_imageset(
    paths: Sequence[str | os.PathLike],
    names: Sequence[str],
    out: str | os.PathLike,
    *,
    labels: Sequence[int] | None = None,
    size: tuple[int, int] | None = None,
    progress: str | None = None,
) -> ImagesetResult:
    """Write the images ``paths`` (listed as ``names``) into a new LMDB folder ``out``, atomically.

    ``size`` (height, width) resizes every image; ``labels`` gives each record's label (default 0).
    Images that cannot be decoded are skipped and returned with the reason, as convert_imageset skips them.
    """
    out = Path(out)
    if out.exists():
        raise HarrisonError(f"{out}: already exists; delete it to write the imageset again")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(str(partial), map_size=MAP_SIZE, subdir=True, lock=True)
    except (OSError, lmdb.Error) as exc:
        raise HarrisonError(f"cannot create the LMDB {partial}: {exc}; choose a writable folder") from exc
    bad: list[tuple[str, str]] = []
    records = 0
    try:
        txn = env.begin(write=True)
        for index, (path, name) in enumerate(tqdm(list(zip(paths, names)), desc=progress, unit="img",
                                                   file=sys.stderr, disable=progress is None)):
            try:
                rgb = load_rgb(path)
            except ImageError as exc:
                bad.append((name, exc.reason))
                continue
            if size is not None:
                rgb = resize(rgb, size)
            datum = image_to_datum(rgb, labels[index] if labels is not None else 0)
            txn.put(f"{index:08d}_{name}".encode("utf-8"), datum.SerializeToString())
            records += 1
            if records % COMMIT_EVERY == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()
    finally:
        env.close()
    os.replace(partial, out)
    return ImagesetResult(out, records, bad)


def read_imageset(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray, int]]:
    """(key, C x H x W pixels, label) of every record of an LMDB of Datum records, in key order."""
    path = Path(path)
    if not (path / "data.mdb").exists():
        raise HarrisonError(f"{path}: not an LMDB folder (no data.mdb)")
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                datum = caffe_pb2.Datum()
                datum.ParseFromString(value)
                yield key.decode("utf-8"), datum_to_array(datum), datum.label
    finally:
        env.close()
