"""``harrison extract``: run a feature net over the dataset's splits and write its features to HDF5.

For each feature of the config (``--feature`` picks one) and each split (``--split`` picks one) this writes
``<workdir>/features/<feature>/<split>.h5`` (or one shard of it with ``--shard K/N``), resuming an
interrupted run and skipping files that are complete and current. Images that cannot be decoded are
reported and zero-filled, skipped or fatal per ``--on-bad-image``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping

import h5py

from harrison.config import Config, add_config_arguments, config_from_args
from harrison.dataset.lists import SPLITS, dataset_info, read_split, split_path
from harrison.engines import ENGINE_CHOICES, get_engine
from harrison.errors import HarrisonError
from harrison.features import BAD_IMAGE_CHOICES, IDENTITY_KEYS, Shard, extract, feature_path, identity_of, is_current, read_bad, read_identity
from harrison.images import load_preprocess_spec
from harrison.lmdb_io import write_imageset
from harrison.manifest import read_manifest, write_manifest

DEFAULT_BATCH_SIZE = 32
BAD_SHOWN = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--feature", help="one feature of the config (default: all of them)")
    parser.add_argument("--split", choices=SPLITS, help="one split (default: both)")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto", help="which engine runs the net (default: auto)")
    parser.add_argument("--gpu", type=int, default=None, help="GPU id (default: CPU)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"images per forward pass (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--shard", type=Shard.parse, default=None, metavar="K/N",
                        help="extract only shard K of N (1-based) into <split>.shardK-of-N.h5; merge with harrison merge-features")
    parser.add_argument("--on-bad-image", choices=BAD_IMAGE_CHOICES, default="zero",
                        help="an image that cannot be decoded: zero-fill its row (default), skip it, or fail")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count, at most 16)")
    parser.add_argument("--lmdb", action="store_true",
                        help="also write each split's images, resized to the net's input, as Caffe Datum records "
                             "(convert_imageset's layout; label = the first class id) into features/<feature>/<split>_lmdb")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C inside the block, so a stopped stage closes its partial files cleanly."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def feature_files(config: Config, feature: str) -> dict[str, Path]:
    """The net, preprocess spec and weights of ``feature``; the weights default to ``<workdir>/weights/<feature>.caffemodel``."""
    section = config.section("features", feature)
    files = {key: config.resolve(config.section("features", feature, key)) for key in ("net", "preprocess")}
    weights = section.get("weights")
    files["weights"] = config.resolve(weights) if weights else config.workdir / "weights" / f"{feature}.caffemodel"
    for key, path in files.items():
        if not path.exists():
            fix = "run harrison make-weights" if key == "weights" and not weights else f"fix features.{feature}.{key} in {config.path}"
            raise HarrisonError(f"{path}: the {key} of feature '{feature}' is missing; {fix}")
    return files


def image_root(dataset_dir: Path) -> Path:
    """The folder the split lists' image paths are relative to."""
    root = Path(dataset_info(dataset_dir)["image_root"])
    return root if root.is_absolute() else (dataset_dir / root).resolve()


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.batch_size < 1:
        raise HarrisonError(f"--batch-size {args.batch_size}: must be at least 1")
    names = list(config.section("features"))
    if args.feature is not None and args.feature not in names:
        raise HarrisonError(f"--feature {args.feature!r}: {config.path} defines {', '.join(names)}")
    dataset_dir = config.workdir / "dataset"
    root = image_root(dataset_dir)
    engine = None
    with sigterm_as_interrupt():
        for feature in [args.feature] if args.feature else names:
            files = feature_files(config, feature)
            spec = load_preprocess_spec(files["preprocess"])
            runner = None
            seconds: dict[str, float] = {}
            try:
                for split in [args.split] if args.split else list(SPLITS):
                    list_file = split_path(dataset_dir, split)
                    if args.lmdb:
                        _write_lmdb(dataset_dir, root, split, spec.input_size, feature_path(config.workdir, feature, split).parent)
                    identity = identity_of({**files, "list": list_file}, spec.feature_blob, args.on_bad_image)
                    out = feature_path(config.workdir, feature, split, args.shard)
                    if is_current(out, identity):
                        print(f"{out}: up to date, skipped", file=sys.stderr)
                        continue
                    images, _ = read_split(dataset_dir, split)
                    if runner is None:
                        if engine is None:
                            engine, reason = get_engine(args.engine, args.gpu)
                            print(f"engine: {engine.name} ({reason})", file=sys.stderr)
                        runner = engine.load_net(files["net"], files["weights"])
                    forward = _forward(runner, spec.input_blob, spec.feature_blob)
                    rows = args.shard.rows(len(images), args.batch_size) if args.shard else None
                    began = time.time()
                    result = extract(forward, spec, [root / image for image in images], images, out,
                                     {**identity, "engine": engine.name}, batch_size=args.batch_size, rows=rows, workers=args.workers,
                                     progress=f"{feature}/{split}",
                                     notes={"engine_facts": json.dumps(engine.manifest_entry(), sort_keys=True)})
                    seconds[split] = round(time.time() - began, 1)
                    print(f"{out}: {result.rows} rows in {seconds[split]:.1f} s", file=sys.stderr)
                    _report_bad(result.bad, args.on_bad_image)
            finally:
                if runner is not None:
                    runner.close()
            if args.shard is None:
                write_feature_manifest(config, feature, files, seconds)
    return 0


def _write_lmdb(dataset_dir: Path, root: Path, split: str, size: tuple[int, int], folder: Path) -> None:
    out = folder / f"{split}_lmdb"
    if out.exists():
        print(f"{out}: exists, skipped (delete it to write it again)", file=sys.stderr)
        return
    images, labels = read_split(dataset_dir, split)
    result = write_imageset([root / image for image in images], images, out, labels=[ids[0] for ids in labels],
                            size=size, progress=f"lmdb {split}")
    print(f"{out}: {result.records} Datum records", file=sys.stderr)
    _report_bad(result.bad, "skip")


def _forward(runner, input_blob: str, blob: str):
    def forward(batch):
        return runner.forward({input_blob: batch}, [blob])[blob]
    return forward


def _report_bad(bad: list[tuple[str, str]], policy: str) -> None:
    if not bad:
        return
    action = {"zero": "zero-filled", "skip": "left out"}[policy]
    print(f"{len(bad)} images could not be decoded ({action}; listed in the manifest):", file=sys.stderr)
    for image, reason in bad[:BAD_SHOWN]:
        print(f"  {image}: {reason}", file=sys.stderr)
    if len(bad) > BAD_SHOWN:
        print(f"  ... and {len(bad) - BAD_SHOWN} more", file=sys.stderr)


def write_feature_manifest(config: Config, feature: str, files: dict[str, Path],
                           seconds: Mapping[str, float] | None = None) -> None:
    """``features/<feature>/manifest.json`` over the complete split files there (bad images included).

    ``seconds`` are the extraction times of the splits extracted just now (the run that finished a resumed
    file counts only its own part); a split extracted earlier keeps the time its previous manifest recorded
    while its file has the same identity, else its time is unknown (``None``, as after merge-features).
    """
    dataset_dir = config.workdir / "dataset"
    folder = feature_path(config.workdir, feature, SPLITS[0]).parent
    try:
        previous = (read_manifest(folder) or {}).get("splits", {})
    except HarrisonError:  # a damaged manifest is replaced; its times are lost
        previous = {}
    outputs, lists, splits = [], [], {}
    for split in SPLITS:
        out = feature_path(config.workdir, feature, split)
        if not out.exists():
            continue
        with h5py.File(out, "r") as handle:
            splits[split] = {
                "rows": int(handle["features"].shape[0]),
                "dim": int(handle["features"].shape[1]),
                "engine": str(handle.attrs.get("engine", "")),
                "engine_facts": json.loads(handle.attrs.get("engine_facts", "{}")),
                "on_bad_image": str(handle.attrs["on_bad_image"]),
                "bad_images": [list(pair) for pair in read_bad(out)],
                **read_identity(out),
            }
        splits[split]["seconds"] = _split_seconds(split, splits[split], seconds or {}, previous)
        outputs.append(out)
        lists.append(split_path(dataset_dir, split))
    write_manifest(folder, "extract", inputs=[*files.values(), *lists], outputs=outputs,
                   settings={"feature": feature, "blob": load_preprocess_spec(files["preprocess"]).feature_blob},
                   extra={"splits": splits})


def _split_seconds(split: str, entry: Mapping[str, object], seconds: Mapping[str, float],
                   previous: Mapping[str, Mapping[str, object]]) -> float | None:
    """This run's extraction time of ``split``, else the previous manifest's for the same file identity."""
    if split in seconds:
        return seconds[split]
    before = previous.get(split, {})
    same = all(before.get(key) == entry[key] for key in (*IDENTITY_KEYS, "rows"))
    return before.get("seconds") if same else None
