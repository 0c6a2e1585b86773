"""The dataset builder: a raw crawl or the release lists in, a dataset folder out.

Crawl steps (as the paper and the release define them): clean each hashtag (harrison.dataset.lemmatize),
drop repeats within a post and repeated images, count in how many posts each tag occurs, keep the
``top_n`` tags (ties by tag name), drop posts left with fewer than ``min_tags`` or more than ``max_tags``
of them, and number the classes by their frequency in the kept posts (ties by name; a class left
with no image disappears, which is how the release has 997 of its 1,000). Release lists keep their class ids.
Both end in a seeded random split (numpy's ``default_rng(seed).permutation``; each list in input order).

The folder is built beside its final place and renamed into it; its manifest is written last.
"""
from __future__ import annotations

import itertools
import os
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from harrison.dataset import figures, lists, stats
from harrison.dataset.crawl import read_crawl
from harrison.dataset.folders import building_folder
from harrison.dataset.lemmatize import TagCleaner
from harrison.dataset.release import FILES as RELEASE_FILES
from harrison.dataset.release import read_release
from harrison.dataset.skips import BadRecords
from harrison.errors import HarrisonError
from harrison.files import write_json
from harrison.manifest import is_current, write_manifest

STAGE = "build-dataset"
RELEASE_COVERAGE = "the release lists only the tags of its classes, so their share of all tags is unknown"


@dataclass(frozen=True)
class BuildOptions:
    """The builder's settings (the ``dataset`` section of a config); defaults are the paper's."""

    top_n: int = 1000
    min_tags: int = 1
    max_tags: int = 10
    test_size: int = 5000
    seed: int = 0
    verb_pass: bool = False
    skip_bad: bool = False

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any], **overrides: Any) -> "BuildOptions":
        """Options from a config's ``dataset`` section; ``overrides`` that are not None win."""
        values = {f.name: section[f.name] for f in fields(cls) if f.name in section}
        values.update({k: v for k, v in overrides.items() if v is not None})
        options = cls(**values)
        options.check()
        return options

    def check(self) -> None:
        """An error for settings that cannot work."""
        for name in ("top_n", "min_tags", "max_tags", "test_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (0 if name == "min_tags" else 1):
                raise HarrisonError(f"dataset.{name} = {getattr(self, name)!r}: expected a positive integer")
        if self.min_tags > self.max_tags:
            raise HarrisonError(f"dataset.min_tags ({self.min_tags}) is above dataset.max_tags ({self.max_tags})")


@dataclass
class Collected:
    """What a reader hands to the common finish: images, class ids, class names and the record."""

    images: list[str]
    labels: list[list[int]]
    classes: list[str]
    inputs: list[Path]
    details: dict[str, Any]
    coverage_counts: Sequence[int] | None  # occurrences of every distinct tag; None where the input holds only its classes
    rerank: bool


def build_dataset(
    out: str | os.PathLike,
    *,
    image_root: str | os.PathLike,
    crawl: str | os.PathLike | None = None,
    release: str | os.PathLike | None = None,
    options: BuildOptions = BuildOptions(),
    force: bool = False,
    config: str | os.PathLike | None = None,
) -> tuple[Path, bool]:
    """Build the dataset folder ``out`` from a crawl file or a release folder (exactly one).

    ``config`` (the run config the settings came from) is recorded in the manifest.
    Returns the folder and whether it was built (False: its manifest was current, nothing done).
    """
    if (crawl is None) == (release is None):
        raise HarrisonError("give either a crawl file or a release folder")
    options.check()
    out = Path(out).resolve()
    source = "crawl" if crawl is not None else "release"
    input_path = Path(crawl if crawl is not None else release).resolve()
    inputs = [input_path] if crawl is not None else [input_path / name for name in RELEASE_FILES]
    settings = {"source": source, "input": str(input_path), "image_root": str(Path(image_root).resolve()), **asdict(options)}
    if not force and is_current(out, inputs=inputs, settings=settings):
        return out, False
    bad = BadRecords(options.skip_bad)
    collected = _from_crawl(input_path, options, bad) if crawl is not None else _from_release(input_path, bad)
    _finish(out, collected, options, settings, bad, None if config is None else str(Path(config).resolve()))
    return out, True


def _from_crawl(path: Path, options: BuildOptions, bad: BadRecords) -> Collected:
    cleaner = TagCleaner(options.verb_pass)
    images: list[str] = []
    posts: list[list[str]] = []
    seen: set[str] = set()
    raw_tags = rejected = repeats = duplicate_images = read = 0
    for post in tqdm(read_crawl(path, bad), desc="posts", unit=" posts", mininterval=1.0, leave=False):
        read += 1
        if post.image in seen:
            duplicate_images += 1
            continue
        seen.add(post.image)
        cleaned = [cleaner(tag) for tag in post.tags]
        lemmas = list(dict.fromkeys(tag for tag in cleaned if tag is not None))
        raw_tags += len(cleaned)
        rejected += sum(tag is None for tag in cleaned)
        repeats += len(cleaned) - len(lemmas) - sum(tag is None for tag in cleaned)
        images.append(post.image)
        posts.append(lemmas)
    counts = Counter(itertools.chain.from_iterable(posts))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: options.top_n]
    classes = [tag for tag, _ in ranked]
    index = {tag: class_id for class_id, tag in enumerate(classes)}
    labels = [[index[tag] for tag in lemmas if tag in index] for lemmas in posts]
    details = {
        "posts_read": read,
        "duplicate_images": duplicate_images,
        "raw_tags": raw_tags,
        "distinct_raw_tags": cleaner.distinct_raw,
        "rejected_non_alphabetic": rejected,
        "repeats_dropped": repeats,
        "distinct_tags": len(counts),
    }
    return Collected(images, labels, classes, [path], details, list(counts.values()), rerank=True)


def _from_release(folder: Path, bad: BadRecords) -> Collected:
    images, labels, classes, inputs = read_release(folder, bad)
    counts = stats.class_counts(labels, len(classes))
    details = {"posts_read": len(images) + bad.count, "distinct_tags": int((counts > 0).sum())}
    return Collected(images, labels, classes, inputs, details, None, rerank=False)


def _finish(out: Path, data: Collected, options: BuildOptions, settings: dict[str, Any], bad: BadRecords, config: str | None) -> None:
    keep = [i for i, ids in enumerate(data.labels) if options.min_tags <= len(ids) <= options.max_tags and ids]
    dropped = {
        "too_few_tags": sum(1 for ids in data.labels if not ids or len(ids) < options.min_tags),
        "too_many_tags": sum(1 for ids in data.labels if len(ids) > options.max_tags),
    }
    images = [data.images[i] for i in keep]
    labels = [data.labels[i] for i in keep]
    classes = data.classes
    counts = stats.class_counts(labels, len(classes))
    if data.rerank:
        order = sorted((c for c in range(len(classes)) if counts[c] > 0), key=lambda c: (-counts[c], classes[c]))
        new_id = {old: new for new, old in enumerate(order)}
        labels = [[new_id[c] for c in ids] for ids in labels]
        classes = [classes[c] for c in order]
        counts = counts[order]
    if options.test_size >= len(images):
        raise HarrisonError(
            f"{settings['input']}: {len(images)} images remain, not enough for a test split of {options.test_size}; "
            "lower dataset.test_size (--test-size)"
        )
    permutation = np.random.default_rng(options.seed).permutation(len(images))
    split_rows = {"test": np.sort(permutation[: options.test_size]), "train": np.sort(permutation[options.test_size :])}

    summary = stats.label_stats(labels)
    record = {
        **summary,
        "classes": len(classes),
        "train": int(split_rows["train"].size),
        "test": int(split_rows["test"].size),
        "coverage": (stats.coverage(data.coverage_counts) if data.coverage_counts is not None
                     else stats.coverage_not_applicable(RELEASE_COVERAGE)),
        "dropped_posts": dropped,
        "skipped_records": bad.count,
        **data.details,
        "top_tags": [[tag, int(count)] for tag, count in zip(classes[:20], counts[:20])],
    }
    with building_folder(out) as tmp:
        lists.write_vocab(tmp / lists.VOCAB_NAME, zip(classes, counts.tolist()))
        for split, rows in split_rows.items():
            lists.write_split(lists.split_path(tmp, split), [images[i] for i in rows], [labels[i] for i in rows])
        write_json(tmp / "stats.json", record)
        by_count = np.argsort(-counts, kind="stable")
        figures.tags_per_image_figure(summary["tags_per_image"]["histogram"], tmp / "figures" / "tags_per_image.png")
        figures.tag_frequency_figure([classes[c] for c in by_count], counts[by_count].tolist(), tmp / "figures" / "tag_frequency.png")
    outputs = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    write_manifest(
        out,
        STAGE,
        inputs=data.inputs,
        outputs=outputs,
        settings=settings,
        extra={
            "image_root": settings["image_root"],
            "config": config,
            "num_classes": len(classes),
            "seed": options.seed,
            "counts": {k: record[k] for k in ("images", "train", "test", "classes", "tag_assignments")},
            "skipped": bad.summary(),
        },
    )

