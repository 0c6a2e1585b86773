"""``harrison build-dataset``: clean a raw crawl or read the release lists into a dataset folder.

With a config (default configs/demo.yaml) the inputs and options come from its ``dataset`` section and
the folder is <workdir>/dataset; a missing demo crawl is generated first (``harrison make-demo``).
With explicit inputs (``--crawl FILE`` or ``--release DIR``, and ``--out DIR``) no config is read and
the options are the paper's unless given. The build is skipped while its manifest is current.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from harrison.config import add_config_arguments, config_from_args
from harrison.dataset.build import BuildOptions, build_dataset
from harrison.dataset.lists import dataset_info
from harrison.errors import HarrisonError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stage's options."""
    add_config_arguments(parser)
    explicit = parser.add_argument_group("explicit inputs (instead of the config)")
    explicit.add_argument("--crawl", type=Path, help="raw crawl, JSON Lines: {\"image\": ..., \"tags\": [...] or \"caption\": ...}")
    explicit.add_argument("--image-root", type=Path, help="folder the image paths are relative to (default: the input's folder)")
    explicit.add_argument("--release", type=Path, help="folder with the release's data_list.txt, tag_list.txt, vocab_index.txt")
    explicit.add_argument("--out", type=Path, help="dataset folder to write (required with explicit inputs; with a config: <workdir>/dataset)")
    options = parser.add_argument_group("options (override the config or the paper's defaults)")
    options.add_argument("--top-n", type=int, help="keep the N most frequent tags (paper: 1000)")
    options.add_argument("--min-tags", type=int, help="drop posts with fewer tags left (paper: 1)")
    options.add_argument("--max-tags", type=int, help="drop posts with more tags left (paper: 10)")
    options.add_argument("--test-size", type=int, help="images in the test split (paper: 5000)")
    options.add_argument("--seed", type=int, help="seed of the random split")
    options.add_argument("--verb-pass", action="store_true", default=None, help="lemmatize as a verb after the noun pass")
    parser.add_argument("--skip-bad", action="store_true", default=None, help="skip bad input records and count them in the manifest")
    parser.add_argument("--force", action="store_true", help="rebuild even when the folder is current")


def run(args: argparse.Namespace) -> int:
    """Build (or find current) the dataset folder and print its figures."""
    overrides = {
        "top_n": args.top_n, "min_tags": args.min_tags, "max_tags": args.max_tags, "test_size": args.test_size,
        "seed": args.seed, "verb_pass": args.verb_pass, "skip_bad": args.skip_bad,
    }
    if args.crawl is not None or args.release is not None:
        if args.crawl is not None and args.release is not None:
            raise HarrisonError("give --crawl or --release, not both")
        if args.out is None:
            raise HarrisonError("--out DIR is required with --crawl or --release")
        source = args.crawl if args.crawl is not None else args.release
        image_root = args.image_root or (source.parent if args.crawl is not None else source)
        options = BuildOptions.from_mapping({}, **overrides)
        out, built = build_dataset(args.out, image_root=image_root, crawl=args.crawl, release=args.release, options=options, force=args.force)
    else:
        config = config_from_args(args)
        section = config.section("dataset")
        options = BuildOptions.from_mapping(section, **overrides)
        out = args.out or config.workdir / "dataset"
        source = section.get("source", "crawl")
        if source == "crawl":
            crawl = config.resolve(config.section("dataset", "crawl"))
            if not crawl.exists() and "demo" in section:
                from harrison.dataset.demo import make_demo

                demo = section["demo"]
                print(f"harrison build-dataset: {crawl} is missing; generating the demo data", flush=True)
                make_demo(crawl.parent, images=int(demo["images"]), seed=int(demo["seed"]))
            image_root = config.resolve(section.get("image_root", crawl.parent))
            out, built = build_dataset(out, image_root=image_root, crawl=crawl, options=options, force=args.force, config=config.path)
        elif source == "release":
            release = config.resolve(config.section("dataset", "release"))
            image_root = config.resolve(section.get("image_root", release))
            out, built = build_dataset(out, image_root=image_root, release=release, options=options, force=args.force, config=config.path)
        else:
            raise HarrisonError(f"{config.path}: dataset.source is {source!r}; use crawl or release")
    info = dataset_info(out)
    counts = info["counts"]
    state = "built" if built else "current, nothing to do"
    print(
        f"{out}: {state}; {counts['images']} images ({counts['train']} train, {counts['test']} test), "
        f"{counts['classes']} classes, {counts['tag_assignments']} tags, "
        f"{counts['tag_assignments'] / counts['images']:.4f} per image; skipped records: {info['skipped']['count']}"
    )
    return 0
