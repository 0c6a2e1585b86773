"""The released HARRISON lists: data_list.txt, tag_list.txt and vocab_index.txt.

Line i of data_list.txt is an image path, line i of tag_list.txt its space-separated tags;
vocab_index.txt holds a tag and its class id a line. The release's class ids are kept as given.
"""
from __future__ import annotations

import os
from pathlib import Path

from harrison.dataset.skips import BadRecords
from harrison.errors import HarrisonError

DATA_LIST, TAG_LIST, VOCAB_INDEX = "data_list.txt", "tag_list.txt", "vocab_index.txt"
FILES = (DATA_LIST, TAG_LIST, VOCAB_INDEX)
REFETCH = "restore the release's HARRISON/ folder (data_list.txt, tag_list.txt, vocab_index.txt)"


def release_files(release: str | os.PathLike) -> list[Path]:
    """The three list files of a release folder; an error naming any that is missing."""
    folder = Path(release)
    paths = [folder / name for name in FILES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise HarrisonError(f"{folder}: {', '.join(missing)} not found; point dataset.release or --release at the release's HARRISON/ folder")
    return paths


def read_vocab_index(path: str | os.PathLike) -> list[str]:
    """The release's tags in class-id order (ids must be 0..C-1, each once; each tag once)."""
    path = Path(path)
    by_id: dict[int, str] = {}
    tag_lines: dict[str, int] = {}
    for number, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise HarrisonError(f"{path}:{number}: expected a tag and its class id, found {line.strip()!r}; {REFETCH}")
        class_id = int(fields[1])
        if class_id in by_id:
            raise HarrisonError(f"{path}:{number}: class id {class_id} already given to {by_id[class_id]!r}; {REFETCH}")
        if fields[0] in tag_lines:
            raise HarrisonError(f"{path}:{number}: tag {fields[0]!r} already listed on line {tag_lines[fields[0]]}; each tag must have one class id, {REFETCH}")
        tag_lines[fields[0]] = number
        by_id[class_id] = fields[0]
    if not by_id:
        raise HarrisonError(f"{path}: no classes; {REFETCH}")
    if sorted(by_id) != list(range(len(by_id))):
        missing = min(set(range(len(by_id))) - set(by_id))
        raise HarrisonError(f"{path}: class ids must run 0..{len(by_id) - 1}, but {missing} is missing; {REFETCH}")
    return [by_id[i] for i in range(len(by_id))]


def read_release(release: str | os.PathLike, bad: BadRecords) -> tuple[list[str], list[list[int]], list[str], list[Path]]:
    """Images, their class ids (repeats dropped, release order), the class names, and the files read.

    A tag outside vocab_index.txt, an empty image path or an image path repeated from an earlier
    line (it could land in both train and test) is a bad record; lists of different lengths are
    always an error (the lines no longer pair up).
    """
    data_path, tag_path, vocab_path = release_files(release)
    classes = read_vocab_index(vocab_path)
    index = {tag: class_id for class_id, tag in enumerate(classes)}
    images = [line.strip() for line in _lines(data_path)]
    tag_lines = _lines(tag_path)
    if len(images) != len(tag_lines):
        shorter, longer = sorted([(len(images), data_path), (len(tag_lines), tag_path)], key=lambda item: item[0])
        raise HarrisonError(
            f"{longer[1]}:{shorter[0] + 1}: {longer[1].name} has {longer[0]} lines but {shorter[1].name} has "
            f"{shorter[0]}; line i of each must describe the same image, {REFETCH}"
        )
    if not images:
        raise HarrisonError(f"{data_path}: no images; {REFETCH}")
    kept_images, labels = [], []
    first_line: dict[str, int] = {}
    for number, (image, line) in enumerate(zip(images, tag_lines), start=1):
        if not image:
            bad.report(data_path, number, "no image path", "the line is empty", REFETCH)
            continue
        if image in first_line:
            bad.report(data_path, number, "repeated image", f"{image!r} is already listed on line {first_line[image]}", REFETCH)
            continue
        first_line[image] = number
        ids: list[int] = []
        for tag in line.split():
            class_id = index.get(tag)
            if class_id is None:
                bad.report(tag_path, number, "unknown tag", f"{tag!r} is not in {VOCAB_INDEX}", REFETCH)
                break
            if class_id not in ids:
                ids.append(class_id)
        else:
            kept_images.append(image)
            labels.append(ids)
    return kept_images, labels, classes, [data_path, tag_path, vocab_path]


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HarrisonError(f"{path}: cannot read ({exc.strerror}); {REFETCH}") from None
    except UnicodeDecodeError as exc:
        line = _line_of(path, exc.start)
        raise HarrisonError(f"{path}:{line}: not UTF-8 text; {REFETCH}") from None
    return text.splitlines()


def _line_of(path: Path, offset: int) -> int:
    """The 1-based line number holding byte ``offset`` of a file."""
    return path.read_bytes()[:offset].count(b"\n") + 1
