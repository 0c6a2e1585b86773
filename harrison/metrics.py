"""Hashtag recommendation metrics of the paper: Precision@K, Recall@K and Accuracy@K.

For one image with ground-truth tags GT and the K highest-scored classes topK:
Precision@K = |topK ∩ GT| / K, Recall@K = |topK ∩ GT| / |GT|, Accuracy@K = 1 if topK ∩ GT is not empty.
Every function works on a whole N x C score matrix at once. Ties are broken deterministically: among
equal scores the lower class id ranks first. An image without ground truth has recall 0.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from harrison.errors import HarrisonError

Truth = Union[np.ndarray, Sequence[Sequence[int]]]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The N x k class ids of the k highest scores per row, best first; ties go to the lower id."""
    scores = _check_scores(scores)
    if not 1 <= k <= scores.shape[1]:
        raise HarrisonError(f"k={k} is outside 1..{scores.shape[1]} (the number of classes); choose a k in that range")
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def multi_hot(truth: Truth, num_images: int, num_classes: int) -> np.ndarray:
    """``truth`` (lists of class ids, or an N x C multi-hot array) as an N x C bool array."""
    if isinstance(truth, np.ndarray) and truth.ndim == 2:
        if truth.shape != (num_images, num_classes):
            raise HarrisonError(f"truth is {truth.shape[0]} x {truth.shape[1]} but the scores are {num_images} x {num_classes}")
        return truth.astype(bool)
    if len(truth) != num_images:
        raise HarrisonError(f"truth has {len(truth)} images but the scores have {num_images} rows; use the split the scores came from")
    hot = np.zeros((num_images, num_classes), dtype=bool)
    rows = np.repeat(np.arange(num_images), [len(labels) for labels in truth])
    cols = np.fromiter((c for labels in truth for c in labels), dtype=np.int64, count=len(rows))
    if cols.size and (cols.min() < 0 or cols.max() >= num_classes):
        bad = int(cols[(cols < 0) | (cols >= num_classes)][0])
        raise HarrisonError(f"truth holds class id {bad}, outside 0..{num_classes - 1}; the scores and labels come from different vocabularies")
    hot[rows, cols] = True
    return hot


def hits_at_k(scores: np.ndarray, truth: Truth, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the number of ground-truth tags among the top k, and the number of ground-truth tags."""
    scores = _check_scores(scores)
    hot = multi_hot(truth, *scores.shape)
    top = top_k(scores, k)
    hits = np.take_along_axis(hot, top, axis=1).sum(axis=1)
    return hits, hot.sum(axis=1)


def precision_at_k(scores: np.ndarray, truth: Truth, k: int) -> np.ndarray:
    """Per-image Precision@K = hits / K (float64, length N)."""
    hits, _ = hits_at_k(scores, truth, k)
    return hits / float(k)


def recall_at_k(scores: np.ndarray, truth: Truth, k: int) -> np.ndarray:
    """Per-image Recall@K = hits / |GT| (0 where an image has no ground truth)."""
    hits, sizes = hits_at_k(scores, truth, k)
    return np.divide(hits, sizes, out=np.zeros(len(hits), dtype=np.float64), where=sizes > 0)


def accuracy_at_k(scores: np.ndarray, truth: Truth, k: int) -> np.ndarray:
    """Per-image Accuracy@K: 1.0 when at least one ground-truth tag is among the top K, else 0.0."""
    hits, _ = hits_at_k(scores, truth, k)
    return (hits > 0).astype(np.float64)


def evaluate(scores: np.ndarray, truth: Truth, k: int = 5) -> dict[str, float]:
    """The paper's three figures as fractions averaged over images: precision@1, recall@k, accuracy@k."""
    scores = _check_scores(scores)
    hot = multi_hot(truth, *scores.shape)
    return {
        "precision@1": float(precision_at_k(scores, hot, 1).mean()),
        f"recall@{k}": float(recall_at_k(scores, hot, k).mean()),
        f"accuracy@{k}": float(accuracy_at_k(scores, hot, k).mean()),
    }


def _check_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise HarrisonError(f"scores must be a non-empty N x C matrix, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise HarrisonError("scores contain NaN or infinite values; the classifier diverged, retrain it")
    return scores
