"""Dataset statistics as the paper reports them: images, tag assignments, tags per image, tag coverage."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

COVERAGE_TOPS = (1000, 5000)


def coverage(counts: Sequence[int], tops: Sequence[int] = COVERAGE_TOPS) -> dict[str, float]:
    """Share of all tag occurrences held by the ``top`` most frequent tags (the paper: 59% and 74.6%)."""
    ordered = np.sort(np.asarray(counts, dtype=np.int64))[::-1]
    total = int(ordered.sum())
    return {f"top_{top}": (float(ordered[:top].sum()) / total if total else 0.0) for top in tops}


def coverage_not_applicable(reason: str, tops: Sequence[int] = COVERAGE_TOPS) -> dict[str, str | None]:
    """Coverage where the input cannot give it: each ``top_N`` null, and ``reason`` saying why."""
    return {**{f"top_{top}": None for top in tops}, "reason": reason}


def label_stats(labels: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Images, tag assignments and the tags-per-image average, range and histogram of a label list."""
    sizes = np.fromiter((len(ids) for ids in labels), dtype=np.int64, count=len(labels))
    values, counts = np.unique(sizes, return_counts=True)
    return {
        "images": int(sizes.size),
        "tag_assignments": int(sizes.sum()),
        "tags_per_image": {
            "mean": round(float(sizes.mean()), 4) if sizes.size else 0.0,
            "min": int(sizes.min()) if sizes.size else 0,
            "max": int(sizes.max()) if sizes.size else 0,
            "histogram": {str(int(v)): int(c) for v, c in zip(values, counts)},
        },
    }


def class_counts(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """How many images carry each class."""
    flat = np.fromiter((c for ids in labels for c in ids), dtype=np.int64)
    return np.bincount(flat, minlength=num_classes)
