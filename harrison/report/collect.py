"""What the report shows, read from a run folder: Table 1, loss curves, dataset statistics, scored test images.

Every part is optional: a run that has not reached a stage yet gives ``None`` (or nothing) for its part, and the
page says which command fills it in.
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from harrison.dataset.lists import read_split, read_vocab
from harrison.errors import HarrisonError
from harrison.files import read_json
from harrison.metrics import multi_hot, top_k
from harrison.table import table1


@dataclasses.dataclass
class LossCurve:
    """One model's loss.csv: displayed train loss and test loss by iteration."""

    train: list[tuple[int, float]]
    test: list[tuple[int, float]]


@dataclasses.dataclass
class Prediction:
    """One test image with its top-K hashtags (tag, score, in the ground truth) and its ground-truth tags."""

    image: str
    top: list[tuple[str, float, bool]]
    truth: list[tuple[str, bool]]
    """Ground-truth tags, each with whether the top K found it."""

    @property
    def hits(self) -> int:
        return sum(hit for _, _, hit in self.top)


@dataclasses.dataclass
class TagQuality:
    """Precision and recall of one tag over the test images when each image is given its top-K tags."""

    tag: str
    count: int
    """Images carrying the tag in the whole dataset (vocab.tsv)."""
    support: int
    """Test images carrying the tag."""
    predicted: int
    """Test images given the tag in their top K."""
    precision: float | None
    recall: float | None


@dataclasses.dataclass
class Scored:
    """A model's test scores with the test ground truth, aligned by image."""

    model: str
    images: list[str]
    scores: np.ndarray
    truth: np.ndarray
    """N x C bool."""
    tags: list[str]
    counts: list[int]


def read_table(workdir: Path, order: Sequence[str]) -> dict[str, Any] | None:
    """results/table1.json when the table stage wrote it, else Table 1 from eval/*/metrics.json, else None.

    Rows come in ``order`` (the config's models), any others after them. ``not_comparable`` is added: why the run's
    numbers cannot be compared with the paper's (see ``not_comparable``), or None.
    """
    path = workdir / "results" / "table1.json"
    if path.exists():
        table = read_json(path)
    else:
        results = {p.parent.name: read_json(p) for p in sorted((workdir / "eval").glob("*/metrics.json"))}
        if not results:
            return None
        table = table1(results)
    rows = table["rows"]
    table["rows"] = {model: rows[model] for model in [*order, *rows] if model in rows}
    table["not_comparable"] = not_comparable(workdir)
    return table


def not_comparable(workdir: Path) -> str | None:
    """Why the run's Table 1 cannot be set against the paper's, or None when nothing says so.

    Two signals from the run's own records: the dataset was not built from the HARRISON release
    (dataset/manifest.json's ``settings.source``), and the features were extracted with weights that
    ``harrison make-weights`` filled (their checksum is in a weights/*.caffemodel.json record), not pretrained VGG-16s.
    """
    manifest = workdir / "dataset" / "manifest.json"
    source = read_json(manifest).get("settings", {}).get("source") if manifest.exists() else None
    other_data = source not in (None, "release")
    filled = {read_json(p).get("weights_sha256") for p in (workdir / "weights").glob("*.caffemodel.json")}
    used = {split.get("weights_sha256") for p in (workdir / "features").glob("*/manifest.json")
            for split in read_json(p).get("splits", {}).values()}
    filler_nets = bool(filled & used - {None})
    if other_data and filler_nets:
        what = "demo data and nets"
    elif other_data:
        what = f"data from a {source}, not the HARRISON release"
    elif filler_nets:
        what = "feature nets with filler-made weights, not the pretrained VGG-16s"
    else:
        return None
    return f"{what}: not comparable with the paper's numbers"


def read_loss_csv(path: Path) -> LossCurve:
    """The ``phase,iteration,name,value`` rows of a loss.csv (harrison.caffelog.write_loss_csv) as two curves."""
    train: list[tuple[int, float]] = []
    test: list[tuple[int, float]] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != ["phase", "iteration", "name", "value"]:
            raise HarrisonError(f"{path}:1: expected the header phase,iteration,name,value; rerun harrison train")
        for number, row in enumerate(reader, start=2):
            if row["name"] != "loss" or row["phase"] not in ("train", "test"):
                continue
            try:
                point = (int(row["iteration"]), float(row["value"]))
            except (TypeError, ValueError):
                raise HarrisonError(f"{path}:{number}: iteration and value must be numbers; rerun harrison train") from None
            (train if row["phase"] == "train" else test).append(point)
    return LossCurve(train, test)


def read_losses(workdir: Path, models: Sequence[str]) -> dict[str, LossCurve]:
    """The loss curves of the models that have a models/<model>/loss.csv, in the given order."""
    return {model: read_loss_csv(path) for model in models if (path := workdir / "models" / model / "loss.csv").exists()}


def read_trainings(workdir: Path, models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per model with a models/<model>/manifest.json: status, engine, device, iterations, seconds and when."""
    found = {}
    for model in models:
        path = workdir / "models" / model / "manifest.json"
        if path.exists():
            manifest = read_json(path)
            engine = manifest.get("engine", {})
            found[model] = {"status": manifest.get("status", "?"), "engine": engine.get("engine", "?"),
                            "version": engine.get("version", ""), "device": engine.get("mode", engine.get("device", "")),
                            "iterations": manifest.get("iterations"), "seconds": manifest.get("seconds"),
                            "created": manifest.get("created", "")}
    return found


def read_dataset(workdir: Path) -> tuple[dict[str, Any] | None, list[Path]]:
    """dataset/stats.json (or None) and the dataset's figures."""
    folder = workdir / "dataset"
    stats = read_json(folder / "stats.json") if (folder / "stats.json").exists() else None
    return stats, sorted((folder / "figures").glob("*.png"))


def read_scored(workdir: Path, model: str) -> Scored | None:
    """eval/<model>/scores.h5 with the test split's labels, or None when the model is not evaluated.

    Rows are matched to test.tsv by image path; an image of the scores that the split does not list is an error.
    """
    path = workdir / "eval" / model / "scores.h5"
    if not path.exists():
        return None
    dataset_dir = workdir / "dataset"
    vocab = read_vocab(dataset_dir)
    images, labels = read_split(dataset_dir, "test")
    with h5py.File(path, "r") as handle:
        scores = np.asarray(handle["scores"][:], dtype=np.float32)
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in handle["image"][:]]
    if scores.ndim != 2 or scores.shape != (len(names), len(vocab)):
        raise HarrisonError(f"{path}: scores are {scores.shape} for {len(names)} images, but the dataset has "
                            f"{len(vocab)} classes; rerun harrison evaluate --model {model}")
    label_of = dict(zip(images, labels))
    unknown = [name for name in names if name not in label_of]
    if unknown:
        raise HarrisonError(f"{path}: image {unknown[0]} is not in {dataset_dir / 'test.tsv'} (another dataset); "
                            f"rerun harrison evaluate --model {model}")
    truth = multi_hot([label_of[name] for name in names], len(names), len(vocab))
    return Scored(model, names, scores, truth, [tag for _, tag, _ in vocab], [count for _, _, count in vocab])


def predictions(scored: Scored, rows: Sequence[int], k: int) -> list[Prediction]:
    """The top-``k`` tags of the chosen rows beside their ground truth."""
    top = top_k(scored.scores[list(rows)], k)
    found = []
    for row, ids in zip(rows, top):
        truth_ids = np.flatnonzero(scored.truth[row])
        found.append(Prediction(
            scored.images[row],
            [(scored.tags[c], float(scored.scores[row, c]), bool(scored.truth[row, c])) for c in ids],
            [(scored.tags[c], bool(c in ids)) for c in truth_ids],
        ))
    return found


def gallery_rows(count: int, total: int) -> list[int]:
    """``count`` rows spread evenly over ``total`` (deterministic, first and last included)."""
    return sorted(set(np.linspace(0, total - 1, num=min(count, total)).round().astype(int).tolist()))


def tag_quality(scored: Scored, k: int, top: int) -> list[TagQuality]:
    """Per-tag precision and recall at ``k`` for the ``top`` most frequent tags (dataset counts)."""
    predicted = np.zeros_like(scored.truth)
    np.put_along_axis(predicted, top_k(scored.scores, k), True, axis=1)
    order = np.argsort(-np.asarray(scored.counts), kind="stable")[:top]
    rows = []
    for c in order:
        hits = int((predicted[:, c] & scored.truth[:, c]).sum())
        given, support = int(predicted[:, c].sum()), int(scored.truth[:, c].sum())
        rows.append(TagQuality(scored.tags[c], int(scored.counts[c]), support, given,
                               hits / given if given else None, hits / support if support else None))
    return rows

