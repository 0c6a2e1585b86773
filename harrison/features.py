"""Feature files: ``features/<feature>/<split>.h5`` written with resume, split into shards, merged, read.

A feature file holds ``features`` (N x D float32) and ``image`` (the N image paths, as in the split's list),
plus ``bad_image`` / ``bad_reason`` (the images that could not be decoded) and attributes that identify
what made it: ``net_sha256``, ``weights_sha256``, ``preprocess_sha256``, ``list_sha256`` (the split's .tsv),
``blob``, ``on_bad_image`` and, for a shard, ``start``/``stop`` (rows of the list) and ``total``.

While extraction runs it writes ``<name>.h5.partial``: every row is allocated up front, each finished batch
is written and flushed, and the attribute ``done`` records how many rows of the range are final. A rerun
with the same identity resumes at ``done``; the file is renamed to ``<name>.h5`` when complete. The disk space
of every row is reserved when the file is made, so a full disk or a file-size limit is a clear error before
HDF5 writes (HDF5 cannot close a file whose write failed, and crashes).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import h5py
import numpy as np
from tqdm import tqdm

from harrison.errors import HarrisonError
from harrison.images import Batch, PreprocessSpec, load_batches

BAD_IMAGE_CHOICES = ("zero", "skip", "fail")
IDENTITY_KEYS = ("net_sha256", "weights_sha256", "preprocess_sha256", "list_sha256", "blob", "on_bad_image")
STRING = h5py.string_dtype("utf-8")
SHARD_PATTERN = re.compile(r"^(?P<split>[^.]+)\.shard(?P<k>\d+)-of-(?P<n>\d+)\.h5$")
MERGE_ROWS = 4096
# Bytes reserved on disk while a partial file is made, besides its features: per row (the image name's and
# reason's variable-length records, the valid flag) and for the file's own structures. HDF5 cannot recover from
# a write that fails for want of space (it crashes on closing), so the space is taken before HDF5 needs it.
RESERVE_PER_ROW = 128
RESERVE_FIXED = 1 << 20


class ShardError(HarrisonError, argparse.ArgumentTypeError):
    """A bad ``--shard`` value: a HarrisonError that argparse, given ``Shard.parse`` as a type, reports as a usage error."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"K/N"`` with 1 <= K <= N."""
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise ShardError(f"expected K/N with 1 <= K <= N (e.g. 2/4), found {text!r}")
        return cls(int(match[1]), int(match[2]))

    def rows(self, total: int, batch_size: int) -> tuple[int, int]:
        """The rows [start, stop) of a list of ``total`` this shard covers.

        Shards are whole numbers of batches, so every image goes through the net in the same batch as in an
        unsharded run and the merged file equals the unsharded one bit for bit. The B batches are spread
        evenly: shard K of N takes batches [(K-1)*B//N, K*B//N), so shards differ by at most one batch
        (a shard is empty only when there are fewer batches than shards).
        """
        batches = -(-total // batch_size)
        start = (self.index - 1) * batches // self.count * batch_size
        stop = self.index * batches // self.count * batch_size
        return min(total, start), min(total, stop)


def feature_path(workdir: str | os.PathLike, feature: str, split: str, shard: Shard | None = None) -> Path:
    """``<workdir>/features/<feature>/<split>.h5`` (or ``<split>.shardK-of-N.h5``)."""
    name = f"{split}.h5" if shard is None else f"{split}.shard{shard.index}-of-{shard.count}.h5"
    return Path(workdir) / "features" / feature / name


def partial_path(path: Path) -> Path:
    """Where ``path`` is written while extraction runs."""
    return path.with_name(path.name + ".partial")


def read_identity(path: str | os.PathLike) -> dict[str, str] | None:
    """The identity attributes of a complete feature file, or None when it is missing or unreadable."""
    try:
        with h5py.File(path, "r") as handle:
            return {key: _text(handle.attrs.get(key, "")) for key in IDENTITY_KEYS}
    except (OSError, KeyError):
        return None


def is_current(path: str | os.PathLike, identity: Mapping[str, str]) -> bool:
    """True when ``path`` is a complete feature file made from exactly ``identity``."""
    return read_identity(path) == dict(identity)


@dataclasses.dataclass
class Extraction:
    """What ``extract`` did: rows written and the images that could not be decoded."""

    path: Path
    rows: int
    bad: list[tuple[str, str]]
    resumed_at: int


def extract(
    forward: Callable[[np.ndarray], np.ndarray],
    spec: PreprocessSpec,
    paths: Sequence[str | os.PathLike],
    names: Sequence[str],
    out: Path,
    identity: Mapping[str, str],
    *,
    batch_size: int,
    rows: tuple[int, int] | None = None,
    workers: int | None = None,
    progress: str | None = None,
    notes: Mapping[str, str] | None = None,
) -> Extraction:
    """Run ``forward`` (a batch of preprocessed images -> B x D features) over ``paths[start:stop]`` into ``out``.

    ``names`` are the image paths as the split lists them (stored in ``image``). Resumes a ``.partial``
    left by an interrupted run with the same identity and range; starts afresh (saying so) otherwise.
    ``identity["on_bad_image"]`` decides what happens to an image that cannot be decoded: ``zero`` keeps a
    zero row, ``skip`` leaves the row out, ``fail`` stops with the image's error. ``notes`` are stored as
    attributes too but, unlike the identity, do not decide whether a partial file can be resumed.
    """
    start, stop = rows if rows is not None else (0, len(paths))
    attrs = {**identity, "start": start, "stop": stop, "total": len(paths), "batch_size": batch_size}
    stored = {**attrs, **(notes or {})}  # what a new partial file records; only ``attrs`` decide a resume
    partial = partial_path(out)
    handle, done = _open_partial(partial, attrs)
    resumed_at = done
    try:
        bar = tqdm(total=stop - start, initial=done - start, unit="img", desc=progress, file=sys.stderr, disable=progress is None)
        with bar:
            for batch in load_batches(paths, spec, batch_size, start=done, stop=stop, workers=workers):
                if batch.bad and identity["on_bad_image"] == "fail":
                    raise batch.bad[0]
                values = np.asarray(forward(batch.data), dtype=np.float32).reshape(len(batch.data), -1)
                values[batch.bad_rows] = 0.0
                if handle is None:
                    handle = _create_partial(partial, stored, names[start:stop], values.shape[1])
                _write_batch(handle, partial, batch.start - start, values, batch)
                bar.update(len(values))
        if handle is None:
            handle = _create_partial(partial, stored, names[start:stop], 0)
        bad = _finish(handle, partial, out, identity["on_bad_image"] == "skip")
        handle = None
    finally:
        if handle is not None:
            with contextlib.suppress(OSError, RuntimeError):  # a failed write's error is the one to report
                handle.close()
    with h5py.File(out, "r") as final:
        count = final["features"].shape[0]
    return Extraction(out, count, bad, resumed_at)


def _open_partial(partial: Path, attrs: Mapping[str, object]) -> tuple[h5py.File | None, int]:
    """An interrupted run's partial file and where to resume, when it matches ``attrs``; else (None, start)."""
    if not partial.exists():
        return None, int(attrs["start"])
    try:
        handle = h5py.File(partial, "r+")
    except OSError as exc:
        print(f"{partial}: unreadable ({exc}); starting this extraction afresh", file=sys.stderr)
        partial.unlink()
        return None, int(attrs["start"])
    differing = [key for key, value in attrs.items() if _plain(handle.attrs.get(key)) != _plain(value)]
    if differing:
        handle.close()
        print(f"{partial}: made with another {', '.join(differing)}; starting this extraction afresh", file=sys.stderr)
        partial.unlink()
        return None, int(attrs["start"])
    done = int(handle.attrs["done"])
    print(f"{partial}: resuming at row {done} of {attrs['start']}..{attrs['stop']}", file=sys.stderr)
    return handle, done


def _create_partial(partial: Path, attrs: Mapping[str, object], names: Sequence[str], dim: int) -> h5py.File:
    """A new partial file with every row allocated, its disk space reserved before HDF5 writes any of it."""
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        handle = h5py.File(partial, "w")
    except OSError as exc:
        raise HarrisonError(f"cannot write {partial}: {exc}; choose a writable --workdir") from exc
    count = len(names)
    _reserve(handle, partial, count * dim * 4, names)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    handle.create_dataset("features", shape=(count, dim), dtype=np.float32, dcpl=dcpl)
    handle.create_dataset("image", data=np.array(names, dtype=object), dtype=STRING)
    handle.create_dataset("valid", data=np.ones(count, dtype=np.uint8))
    handle.create_dataset("reason", shape=(count,), dtype=STRING)
    handle.attrs.update(attrs)
    handle.attrs["done"] = int(attrs["start"])
    _trim(handle)
    return handle


def _reserve(handle: h5py.File, path: Path, data_bytes: int, texts: Sequence[str]) -> None:
    """Take the disk space a new HDF5 file will need (``data_bytes`` of numbers and the strings ``texts``).

    A full disk or a file-size limit then shows here, before HDF5 writes: the file is removed and the error
    says what is in the way. Where the system has no ``posix_fallocate`` (macOS), nothing is reserved.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    size = data_bytes + len(texts) * RESERVE_PER_ROW + sum(len(text.encode("utf-8")) for text in texts) + RESERVE_FIXED
    try:
        os.posix_fallocate(handle.id.get_vfd_handle(), 0, size)
    except OSError as exc:
        handle.close()
        path.unlink()
        raise HarrisonError(f"cannot write {path}: {exc.strerror} (it needs {size / 2**20:.1f} MiB): the disk is full "
                            "or a file-size limit (ulimit -f) is in the way; free space or choose another --workdir, "
                            "then rerun (what was written before is kept)") from exc


def _trim(handle: h5py.File) -> None:
    """Flush ``handle`` and give back the reserved space beyond what HDF5 has allocated (which stays reserved)."""
    handle.flush()
    os.ftruncate(handle.id.get_vfd_handle(), handle.id.get_filesize())


def _write_batch(handle: h5py.File, partial: Path, offset: int, values: np.ndarray, batch: Batch) -> None:
    """Store one batch's rows and bad-image marks, then advance ``done`` and flush."""
    try:
        handle["features"][offset : offset + len(values)] = values
        for row, error in zip(batch.bad_rows, batch.bad):
            handle["valid"][offset + row] = 0
            handle["reason"][offset + row] = error.reason
        handle.attrs["done"] = batch.start + len(values)
        handle.flush()
    except (OSError, RuntimeError) as exc:  # h5py reports a failed flush as RuntimeError
        raise HarrisonError(f"cannot write {partial}: {exc} (is the disk full?); free space and rerun: "
                            f"the rows before {batch.start} are kept") from exc


def _finish(handle: h5py.File, partial: Path, out: Path, skip_bad: bool) -> list[tuple[str, str]]:
    """Turn a complete partial file into ``out``: bad-image records, skipped rows dropped, renamed."""
    valid = handle["valid"][:].astype(bool)
    names = [_text(name) for name in handle["image"][:]]
    reasons = [_text(reason) for reason in handle["reason"][:]]
    bad = [(names[i], reasons[i]) for i in np.flatnonzero(~valid)]
    if skip_bad and bad:
        kept = np.flatnonzero(valid)
        compact = partial.with_name(partial.name + ".compact")
        with h5py.File(compact, "w") as target:
            source = handle["features"]
            _reserve(target, compact, len(kept) * source.shape[1] * 4, names + reasons)
            target.attrs.update(dict(handle.attrs))
            features = target.create_dataset("features", shape=(len(kept), source.shape[1]), dtype=np.float32)
            for first in range(0, len(kept), MERGE_ROWS):
                chunk = kept[first : first + MERGE_ROWS]
                features[first : first + len(chunk)] = source[chunk[0] : chunk[-1] + 1][chunk - chunk[0]]
            target.create_dataset("image", data=np.array([names[i] for i in kept], dtype=object), dtype=STRING)
            _write_bad(target, bad)
            _trim(target)
        handle.close()
        os.replace(compact, partial)
    else:
        del handle["valid"], handle["reason"]
        _write_bad(handle, bad)
        handle.close()
    os.replace(partial, out)
    return bad


def _write_bad(handle: h5py.File, bad: Sequence[tuple[str, str]]) -> None:
    handle.create_dataset("bad_image", data=np.array([b[0] for b in bad], dtype=object), dtype=STRING)
    handle.create_dataset("bad_reason", data=np.array([b[1] for b in bad], dtype=object), dtype=STRING)


def read_bad(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The (image, reason) pairs a complete feature file records as not decodable."""
    with h5py.File(path, "r") as handle:
        return [(_text(i), _text(r)) for i, r in zip(handle["bad_image"][:], handle["bad_reason"][:])]


def find_shards(folder: Path, split: str) -> list[Path]:
    """The complete shard files of ``split`` in ``folder``, ordered by shard number; all K of one N."""
    found: dict[int, dict[int, Path]] = {}
    for path in folder.glob(f"{split}.shard*-of-*.h5"):
        match = SHARD_PATTERN.match(path.name)
        if match and match["split"] == split:
            found.setdefault(int(match["n"]), {})[int(match["k"])] = path
    if not found:
        raise HarrisonError(f"{folder}: no shard files {split}.shardK-of-N.h5; run harrison extract --shard K/N first")
    if len(found) > 1:
        raise HarrisonError(f"{folder}: shards of {split} from several splittings ({', '.join(f'of-{n}' for n in sorted(found))}); delete the stale ones")
    (count, shards), = found.items()
    missing = [k for k in range(1, count + 1) if k not in shards]
    if missing:
        raise HarrisonError(f"{folder}: shards {', '.join(map(str, missing))} of {count} for {split} are missing or unfinished; run them first")
    return [shards[k] for k in range(1, count + 1)]


def merge(shards: Sequence[Path], out: Path) -> int:
    """Concatenate complete shard files in order into ``out`` (atomically) after checking they fit together.

    Every shard must come from the same net, weights, preprocessing, list and settings, and their row
    ranges must tile the whole list. Returns the number of rows written.
    """
    heads = []
    for path in shards:
        with h5py.File(path, "r") as handle:
            heads.append(({key: _text(handle.attrs.get(key, "")) for key in IDENTITY_KEYS},
                          int(handle.attrs["start"]), int(handle.attrs["stop"]), int(handle.attrs["total"]),
                          handle["features"].shape, _text(handle.attrs.get("engine", "")), handle.attrs.get("engine_facts")))
    first_identity, _, _, total, _, engine, engine_facts = heads[0]
    expected_start = 0
    for path, (identity, start, stop, shard_total, _, _, _) in zip(shards, heads):
        differing = [key for key in IDENTITY_KEYS if identity[key] != first_identity[key]]
        if differing or shard_total != total:
            what = ", ".join(differing) or "list length"
            raise HarrisonError(f"{path} and {shards[0]} differ in {what}; rerun the shards with the same net, weights and list")
        if start != expected_start:
            raise HarrisonError(f"{path}: covers rows {start}..{stop} but {expected_start} was expected next; rerun all shards with the same --batch-size")
        expected_start = stop
    if expected_start != total:
        raise HarrisonError(f"{shards[-1]}: the shards end at row {expected_start} of {total}; a shard is missing")
    rows = sum(head[4][0] for head in heads)
    dim = max(head[4][1] for head in heads)
    partial = partial_path(out)
    bad: list[tuple[str, str]] = []
    names: list[str] = []
    with h5py.File(partial, "w") as target:
        features = target.create_dataset("features", shape=(rows, dim), dtype=np.float32)
        at = 0
        for path in shards:
            with h5py.File(path, "r") as source:
                count = source["features"].shape[0]
                for first in range(0, count, MERGE_ROWS):
                    block = source["features"][first : first + MERGE_ROWS]
                    features[at + first : at + first + len(block)] = block
                names += [_text(name) for name in source["image"][:]]
                at += count
            bad += read_bad(path)
        target.create_dataset("image", data=np.array(names, dtype=object), dtype=STRING)
        _write_bad(target, bad)
        target.attrs.update(first_identity)
        target.attrs.update({"start": 0, "stop": total, "total": total, "done": total, "merged_from": len(shards), "engine": engine})
        if engine_facts is not None:
            target.attrs["engine_facts"] = engine_facts
    os.replace(partial, out)
    return rows


def read_images(path: str | os.PathLike) -> list[str]:
    """The ``image`` list of a feature file."""
    with h5py.File(path, "r") as handle:
        return [_text(name) for name in handle["image"][:]]


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _plain(value: object) -> object:
    if isinstance(value, (bytes, str)):
        return _text(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    return value


def identity_of(files: Mapping[str, str | os.PathLike], blob: str, on_bad_image: str) -> dict[str, str]:
    """The identity record from the sha256 of the ``net``, ``weights``, ``preprocess`` and ``list`` files."""
    from harrison.files import sha256

    record = {f"{key}_sha256": sha256(path) for key, path in files.items()}
    record.update(blob=blob, on_bad_image=on_bad_image)
    return {key: record[key] for key in IDENTITY_KEYS}

