"""``harrison merge-features``: join the shards written by ``harrison extract --shard K/N`` into one file.

The shards ``<split>.shardK-of-N.h5`` of a feature must all be complete and come from the same net,
weights, preprocessing, list and settings; they are concatenated in shard order into ``<split>.h5``,
which equals what an unsharded extraction writes. The shard files are kept.
"""
from __future__ import annotations

import argparse
import sys

from harrison.config import add_config_arguments, config_from_args
from harrison.dataset.lists import SPLITS
from harrison.errors import HarrisonError
from harrison.features import feature_path, find_shards, merge
from harrison.stages.extract import feature_files, write_feature_manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--feature", help="one feature of the config (default: all of them)")
    parser.add_argument("--split", choices=SPLITS, help="one split (default: each split that has shards)")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    names = list(config.section("features"))
    if args.feature is not None and args.feature not in names:
        raise HarrisonError(f"--feature {args.feature!r}: {config.path} defines {', '.join(names)}")
    merged = 0
    for feature in [args.feature] if args.feature else names:
        for split in [args.split] if args.split else list(SPLITS):
            out = feature_path(config.workdir, feature, split)
            if args.split is None and not any(out.parent.glob(f"{split}.shard*-of-*.h5")):
                continue
            shards = find_shards(out.parent, split)
            rows = merge(shards, out)
            merged += 1
            print(f"{out}: {rows} rows from {len(shards)} shards", file=sys.stderr)
        write_feature_manifest(config, feature, feature_files(config, feature))
    if not merged:
        raise HarrisonError(f"{config.workdir / 'features'}: no shard files to merge; run harrison extract --shard K/N first")
    return 0
