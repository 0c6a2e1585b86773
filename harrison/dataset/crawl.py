"""The raw crawl: JSON Lines, one post a line.

A post is ``{"image": "images/x.jpg", "tags": ["#Dog", "sea", ...]}`` or
``{"image": "images/x.jpg", "caption": "text with #tags"}`` (both keys may be present; the caption's
tags follow the list's). The image path is relative to the dataset's image root. Blank lines are ignored.
The file is UTF-8 (a byte-order mark is allowed); a line that is not is a bad record.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from harrison.dataset.lemmatize import caption_tags
from harrison.dataset.skips import BadRecords
from harrison.errors import HarrisonError

FIX = "fix or delete that line"


@dataclass(frozen=True)
class Post:
    """One post of the crawl: its line number, image path and raw hashtags."""

    line: int
    image: str
    tags: list[str]


def read_crawl(path: str | os.PathLike, bad: BadRecords) -> Iterator[Post]:
    """The posts of a crawl file in order; bad lines go to ``bad`` (an error unless it skips)."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise HarrisonError(f"{path}: cannot read the crawl ({exc.strerror}); check the path (dataset.crawl or --crawl)") from None
    seen = 0
    with handle:
        try:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                seen += 1
                post = _parse(path, number, raw, bad)
                if post is not None:
                    yield post
        except OSError as exc:
            raise HarrisonError(f"{path}: read failed ({exc.strerror}); copy the file again") from None
    if seen == 0:
        raise HarrisonError(f"{path}: the crawl is empty; expected one JSON post a line ({{\"image\": ..., \"tags\": [...]}})")


def _parse(path: Path, number: int, raw: bytes, bad: BadRecords) -> Post | None:
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, if any, is not part of the JSON
    except UnicodeDecodeError as exc:
        detail = f"byte {exc.start + 1} of the line ({raw[exc.start]:#04x}) is not valid UTF-8"
        bad.report(path, number, "not UTF-8", detail, "save the crawl as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
        return None
    try:
        record = json.loads(text)
    except ValueError as exc:
        bad.report(path, number, "malformed JSON", str(exc), FIX)
        return None
    if not isinstance(record, dict):
        bad.report(path, number, "not a post", f"a JSON {type(record).__name__}, expected an object", FIX)
        return None
    image = record.get("image")
    if not isinstance(image, str) or not image.strip():
        bad.report(path, number, "no image path", "the post has no non-empty 'image' string", FIX)
        return None
    tags = record.get("tags", [])
    caption = record.get("caption", "")
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        bad.report(path, number, "bad tags", "'tags' must be a list of strings", FIX)
        return None
    if not isinstance(caption, str):
        bad.report(path, number, "bad caption", "'caption' must be a string", FIX)
        return None
    if "tags" not in record and "caption" not in record:
        bad.report(path, number, "no tags", "the post has neither 'tags' nor 'caption'", FIX)
        return None
    return Post(number, image.strip(), tags + caption_tags(caption) if caption else tags)
