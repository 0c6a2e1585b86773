"""``harrison evaluate-scores``: P@1, R@K and A@K from a saved score matrix and a split's labels.

The scores are an N x C matrix in a ``.npy`` file or in the ``scores`` dataset of an HDF5 file (as
``harrison evaluate`` writes); when the HDF5 file also has ``image``, its rows must be the split's images in order.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from harrison.dataset.lists import read_split, read_vocab
from harrison.errors import HarrisonError
from harrison.files import write_json
from harrison.metrics import evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stage's options."""
    parser.add_argument("--scores", type=Path, required=True, help="N x C scores: FILE.npy or FILE.h5 (dataset 'scores')")
    parser.add_argument("--dataset", type=Path, required=True, help="dataset folder (from harrison build-dataset)")
    parser.add_argument("--split", default="test", choices=("train", "test"), help="split whose labels the rows follow (default: test)")
    parser.add_argument("--k", type=int, default=5, help="K of recall@K and accuracy@K (default: 5)")
    parser.add_argument("--out", type=Path, help="also write the metrics to this JSON file")


def load_scores(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """The score matrix of a .npy or .h5 file, and the image paths of its rows when the file has them."""
    if not path.is_file():
        raise HarrisonError(f"{path}: not found; pass the scores written by harrison evaluate (scores.h5) or a .npy matrix")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        import h5py

        with h5py.File(path, "r") as handle:
            if "scores" not in handle:
                raise HarrisonError(f"{path}: no 'scores' dataset; expected the file harrison evaluate writes")
            images = [i.decode() if isinstance(i, bytes) else str(i) for i in handle["image"][()]] if "image" in handle else None
            return handle["scores"][()], images
    except (OSError, ValueError) as exc:
        raise HarrisonError(f"{path}: cannot read the scores ({exc}); write them again") from None


def run(args: argparse.Namespace) -> int:
    """Compute, print and optionally save the metrics."""
    if args.k < 1:
        raise HarrisonError(f"--k {args.k}: k must be at least 1 (the K of recall@K and accuracy@K)")
    scores, score_images = load_scores(args.scores)
    images, labels = read_split(args.dataset, args.split)
    num_classes = len(read_vocab(args.dataset))
    if scores.ndim != 2 or scores.shape != (len(images), num_classes):
        raise HarrisonError(
            f"{args.scores}: scores have shape {scores.shape}, but {args.split} of {args.dataset} has "
            f"{len(images)} images and {num_classes} classes; score that split with that dataset"
        )
    if score_images is not None and score_images != images:
        row = next(i for i, (a, b) in enumerate(zip(score_images, images)) if a != b)
        raise HarrisonError(f"{args.scores}: row {row} is {score_images[row]!r} but {args.split}.tsv has {images[row]!r}; the scores follow another list")
    metrics = evaluate(scores, labels, k=args.k)
    result = {"scores": str(args.scores), "dataset": str(args.dataset), "split": args.split, "images": len(images), "k": args.k, "metrics": metrics}
    if args.out is not None:
        write_json(args.out, result)
    print(json.dumps(metrics, indent=2))
    return 0
