"""PNG figures of a dataset in the spirit of the paper's Figures 2 and 3."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from harrison.plots import plt, save_figure


TOP_LABELLED = 30


def tags_per_image_figure(histogram: Mapping[str, int], path: str | os.PathLike) -> Path:
    """Bar chart: number of images per tags-per-image count (the paper's Figure 2)."""
    sizes = sorted(int(k) for k in histogram)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(sizes, [histogram[str(s)] for s in sizes], color="#4c72b0")
    ax.set_xticks(sizes)
    ax.set_xlabel("hashtags per image")
    ax.set_ylabel("images")
    ax.set_title("Hashtags per image")
    return save_figure(fig, path)


def tag_frequency_figure(tags: Sequence[str], counts: Sequence[int], path: str | os.PathLike) -> Path:
    """The frequency of every class in rank order (log scale), the most frequent ones named (Figure 3)."""
    fig, (top, curve) = plt.subplots(2, 1, figsize=(9, 6.5), gridspec_kw={"height_ratios": [1.3, 1]})
    shown = min(TOP_LABELLED, len(tags))
    top.bar(range(shown), counts[:shown], color="#dd8452")
    top.set_xticks(range(shown))
    top.set_xticklabels(tags[:shown], rotation=70, fontsize=7)
    top.set_ylabel("images")
    top.set_title(f"The {shown} most frequent hashtags")
    curve.plot(range(1, len(counts) + 1), counts, color="#4c72b0")
    curve.set_yscale("log")
    curve.set_xlabel("hashtag rank by frequency")
    curve.set_ylabel("images (log)")
    return save_figure(fig, path)
