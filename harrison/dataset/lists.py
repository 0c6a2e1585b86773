"""The dataset folder's files: vocab.tsv, train.tsv, test.tsv and manifest.json.

vocab.tsv: header ``id<TAB>tag<TAB>count``, one class a line, ids 0..C-1 in order.
<split>.tsv: header ``image<TAB>labels``, one image a line; the path is relative to the manifest's
image_root, the labels are space-separated class ids.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from harrison.errors import HarrisonError
from harrison.files import atomic_path, read_json

VOCAB_NAME = "vocab.tsv"
VOCAB_HEADER = "id\ttag\tcount"
SPLIT_HEADER = "image\tlabels"
SPLITS = ("train", "test")


def split_path(dataset_dir: str | os.PathLike, split: str) -> Path:
    """The list file of ``split`` (train or test) in a dataset folder."""
    if split not in SPLITS:
        raise HarrisonError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return Path(dataset_dir) / f"{split}.tsv"


def write_vocab(path: str | os.PathLike, vocab: Iterable[tuple[str, int]]) -> Path:
    """Write (tag, count) pairs as vocab.tsv, ids numbered in the given order (atomically)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as out:
        out.write(VOCAB_HEADER + "\n")
        for class_id, (tag, count) in enumerate(vocab):
            out.write(f"{class_id}\t{tag}\t{count}\n")
    return Path(path)


def write_split(path: str | os.PathLike, images: Sequence[str], labels: Sequence[Sequence[int]]) -> Path:
    """Write a split list (image path and its class ids a line) atomically."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label lists")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as out:
        out.write(SPLIT_HEADER + "\n")
        for image, ids in zip(images, labels):
            out.write(f"{image}\t{' '.join(map(str, ids))}\n")
    return Path(path)


def read_vocab(dataset_dir: str | os.PathLike) -> list[tuple[int, str, int]]:
    """The classes as (id, tag, count), in id order; ids must run 0..C-1."""
    path = Path(dataset_dir) / VOCAB_NAME
    vocab = []
    for number, fields in _rows(path, VOCAB_HEADER, 3):
        try:
            class_id, count = int(fields[0]), int(fields[2])
        except ValueError:
            raise HarrisonError(f"{path}:{number}: id and count must be integers; rebuild the dataset") from None
        if class_id != len(vocab):
            raise HarrisonError(f"{path}:{number}: expected class id {len(vocab)}, found {class_id}; rebuild the dataset")
        vocab.append((class_id, fields[1], count))
    if not vocab:
        raise HarrisonError(f"{path}: no classes; rebuild the dataset with harrison build-dataset")
    return vocab


def read_split(dataset_dir: str | os.PathLike, split: str) -> tuple[list[str], list[list[int]]]:
    """The image paths (relative to image_root) and class-id lists of a split, in file order."""
    path = split_path(dataset_dir, split)
    images: list[str] = []
    labels: list[list[int]] = []
    for number, fields in _rows(path, SPLIT_HEADER, 2):
        try:
            ids = [int(token) for token in fields[1].split()]
        except ValueError:
            raise HarrisonError(f"{path}:{number}: labels must be space-separated class ids; rebuild the dataset") from None
        if not fields[0] or not ids:
            raise HarrisonError(f"{path}:{number}: an image path and at least one label are required; rebuild the dataset")
        images.append(fields[0])
        labels.append(ids)
    return images, labels


def dataset_info(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """The dataset's manifest (image_root, num_classes, counts, seed, ...)."""
    path = Path(dataset_dir) / "manifest.json"
    if not path.exists():
        raise HarrisonError(f"{path}: not found; run harrison build-dataset first (an unfinished build leaves none)")
    info = read_json(path)
    for key in ("image_root", "num_classes"):
        if key not in info:
            raise HarrisonError(f"{path}: no '{key}'; the dataset is from an older version, rebuild it")
    return info


def _rows(path: Path, header: str, width: int) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of a tab-separated file after its header, with errors naming file and line."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise HarrisonError(f"{path}: not found; run harrison build-dataset first") from None
    with handle:
        first = handle.readline().rstrip("\n")
        if first != header:
            raise HarrisonError(f"{path}:1: expected the header {header!r}; this is not a harrison dataset file, rebuild it")
        for number, line in enumerate(handle, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != width:
                raise HarrisonError(f"{path}:{number}: expected {width} tab-separated fields, found {len(fields)}; rebuild the dataset")
            yield number, fields
