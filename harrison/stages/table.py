"""``harrison table``: collect ``eval/*/metrics.json`` into ``results/table1.{md,csv,json}`` and print the Markdown."""
from __future__ import annotations

import argparse
import sys

from harrison.config import add_config_arguments, config_from_args
from harrison.errors import HarrisonError
from harrison.files import read_json
from harrison.table import markdown_table1, write_table1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    eval_dir = config.workdir / "eval"
    results = {path.parent.name: read_json(path) for path in sorted(eval_dir.glob("*/metrics.json"))}
    if not results:
        raise HarrisonError(f"{eval_dir}: no metrics.json; run harrison evaluate first")
    paths = write_table1(results, config.workdir / "results")
    print(markdown_table1(results), end="")
    print("written: " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0
