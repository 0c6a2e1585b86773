"""The report's PNGs (matplotlib, Agg): loss curves of the models, per-tag precision and recall, thumbnails."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from harrison.plots import plt, save_figure
from PIL import Image, ImageOps, UnidentifiedImageError

from harrison.files import atomic_path
from harrison.report.collect import LossCurve, TagQuality

THUMB_SIZE = (240, 240)


def loss_figure(curves: Mapping[str, LossCurve], labels: Mapping[str, str], path: str | os.PathLike) -> Path:
    """Train loss (lines) and test loss (dashed, dots) of every model against the iteration, in one chart."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (model, curve) in enumerate(curves.items()):
        colour = colours[index % len(colours)]
        label = labels.get(model, model)
        if curve.train:
            ax.plot(*zip(*curve.train), color=colour, lw=1.3, label=f"{label}: train")
        if curve.test:
            ax.plot(*zip(*curve.test), color=colour, lw=1.0, ls="--", marker="o", ms=3, label=f"{label}: test")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (sigmoid cross-entropy)")
    ax.set_title("Training of the classifiers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def tag_quality_figure(rows: Sequence[TagQuality], k: int, path: str | os.PathLike) -> Path:
    """Grouped bars: precision and recall at ``k`` of each tag, most frequent first."""
    fig, ax = plt.subplots(figsize=(10, 4))
    positions = range(len(rows))
    width = 0.4
    ax.bar([p - width / 2 for p in positions], [r.precision or 0.0 for r in rows], width, label=f"precision@{k}", color="#4c72b0")
    ax.bar([p + width / 2 for p in positions], [r.recall or 0.0 for r in rows], width, label=f"recall@{k}", color="#dd8452")
    ax.set_xticks(list(positions))
    ax.set_xticklabels([r.tag for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"precision@{k} / recall@{k}")
    ax.set_title(f"Per-tag precision and recall when each test image gets its top {k} tags", pad=24)
    ax.legend(fontsize="small", ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return save_figure(fig, path)


def thumbnail(source: str | os.PathLike, path: str | os.PathLike) -> str | None:
    """Write a JPEG thumbnail of ``source`` (orientation applied) to ``path``; the reason when it cannot be read."""
    try:
        with Image.open(source) as image:
            image = ImageOps.exif_transpose(image)
            image.thumbnail(THUMB_SIZE)
            image = image.convert("RGB")
    except FileNotFoundError:
        return "file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"cannot be decoded ({exc})"
    with atomic_path(path, suffix=".jpg") as tmp:
        image.save(tmp, format="JPEG", quality=88)
    return None
