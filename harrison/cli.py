"""The ``harrison`` command: one subcommand per pipeline stage.

Each stage lives in its own module under ``harrison.stages`` (or where named below) and exposes
``add_arguments(parser)`` and ``run(args) -> int | None``. This file only maps names to modules.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from harrison.errors import HarrisonError

COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("harrison.stages.doctor", "show what was found (Caffe, torch, CUDA, WordNet, disk) and how to fix what is missing"),
    "make-demo": ("harrison.stages.make_demo", "generate the bundled demo photo set and its raw hashtag crawl"),
    "build-dataset": ("harrison.stages.build_dataset", "clean raw hashtags or read the release lists into a dataset folder"),
    "make-weights": ("harrison.stages.make_weights", "fill a net with its fillers and save a .caffemodel (demo feature nets)"),
    "extract": ("harrison.stages.extract", "run a feature net over a dataset split and write fc7 features to HDF5"),
    "merge-features": ("harrison.stages.merge_features", "merge the shards written by 'extract --shard K/N'"),
    "train": ("harrison.stages.train", "train a Table 1 classifier from its solver prototxt"),
    "evaluate": ("harrison.stages.evaluate", "score the test split with a trained classifier and compute P@1, R@5, A@5"),
    "evaluate-scores": ("harrison.stages.evaluate_scores", "compute the metrics from a saved score matrix and a label list"),
    "table": ("harrison.stages.table", "collect evaluation results into Table 1 beside the paper's numbers"),
    "report": ("harrison.stages.report", "write the static HTML report of a run"),
    "recommend": ("harrison.stages.recommend", "top-K hashtags for your own photos"),
    "prepare-release": ("harrison.stages.prepare_release", "check and unpack HARRISON_full.tar and HARRISON_fixed.zip"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the stage ``only`` is imported and given its arguments (the top-level help lists all)."""
    parser = argparse.ArgumentParser(prog="harrison", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            module = importlib.import_module(module_name)
            module.add_arguments(stage_parser)
            stage_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harrison`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except HarrisonError as exc:
        print(f"harrison {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"harrison {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
