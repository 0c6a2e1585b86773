"""Matplotlib on the Agg backend (no display needed) and atomic PNG saving: every figure goes through here."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the Agg backend)

from harrison.files import atomic_path  # noqa: E402

__all__ = ["plt", "save_figure"]


def save_figure(fig: "plt.Figure", path: str | os.PathLike) -> Path:
    """Lay out ``fig``, write it as a PNG at ``path`` atomically, and close it."""
    try:
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path)
