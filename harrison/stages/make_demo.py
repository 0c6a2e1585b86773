"""``harrison make-demo``: generate the bundled demo photo set and its raw hashtag crawl.

Defaults come from the config's ``dataset.demo`` section (configs/demo.yaml: 800 images, seed 7) and
the folder of its crawl file (data/demo). Skipped while the folder's manifest is current.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from harrison.config import add_config_arguments, config_from_args
from harrison.dataset.demo import make_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stage's options."""
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, help="folder to write (default: the folder of the config's dataset.crawl)")
    parser.add_argument("--images", type=int, help="number of pictures (default: the config's dataset.demo.images)")
    parser.add_argument("--seed", type=int, help="random seed (default: the config's dataset.demo.seed)")
    parser.add_argument("--force", action="store_true", help="regenerate even when the folder is current")


def run(args: argparse.Namespace) -> int:
    """Write the demo folder (or find it current) and say where it is."""
    needs_config = args.out is None or args.images is None or args.seed is None
    config = config_from_args(args) if needs_config else None
    out = args.out or config.resolve(config.section("dataset", "crawl")).parent
    images = args.images if args.images is not None else int(config.section("dataset", "demo", "images"))
    seed = args.seed if args.seed is not None else int(config.section("dataset", "demo", "seed"))
    folder, written = make_demo(out, images=images, seed=seed, force=args.force)
    state = "written" if written else "current, nothing to do"
    print(f"{folder}: {state}; {images} images, seed {seed}; crawl: {folder / 'crawl.jsonl'}")
    return 0
