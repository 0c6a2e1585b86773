"""``harrison make-weights``: fill a net with its own fillers, seeded, and save it as a .caffemodel.

With a config: every feature net whose ``weights`` is null gets ``<workdir>/weights/<feature>.caffemodel``
from its ``init_seed`` (the demo's VGG-like nets, which have no pretrained weights). With ``--net``,
``--out`` and ``--seed``: any net. Each .caffemodel has a ``.json`` record beside it (net checksum, seed,
engine); a rerun skips weights that are current. Fillers are the ones written in the prototxt.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harrison.config import add_config_arguments, config_from_args
from harrison.engines import ENGINE_CHOICES, Engine, get_engine
from harrison.errors import HarrisonError
from harrison.files import read_json, sha256, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--feature", action="append", default=None, metavar="NAME",
                        help="only this feature net of the config (repeatable; default: every one with weights: null)")
    parser.add_argument("--net", type=Path, default=None, help="any net prototxt instead of the config's feature nets")
    parser.add_argument("--out", type=Path, default=None, help="with --net: the .caffemodel to write")
    parser.add_argument("--seed", type=int, default=None, help="with --net: the filler seed")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto", help="engine that runs the fillers (default: auto)")
    parser.add_argument("--gpu", type=int, default=None, metavar="N", help="GPU to use (default: CPU)")


def record_path(weights: str | Path) -> Path:
    """The JSON record written beside a made .caffemodel."""
    return Path(f"{weights}.json")


def is_current(net: Path, out: Path, seed: int) -> bool:
    """Whether ``out`` was made from this ``net`` with this ``seed`` and is unchanged since."""
    record = record_path(out)
    if not out.exists() or not record.exists():
        return False
    made = read_json(record)
    return made.get("net_sha256") == sha256(net) and made.get("seed") == seed and made.get("weights_sha256") == sha256(out)


def make_weights(engine: Engine, net: Path, out: Path, seed: int) -> Path:
    """Fill ``net`` with its fillers seeded by ``seed`` and save ``out`` atomically, with its record."""
    engine.init_weights(net, out, seed)
    write_json(record_path(out), {
        "net": str(net), "net_sha256": sha256(net), "seed": seed,
        "weights_sha256": sha256(out), "engine": engine.manifest_entry(),
    })
    return out


def planned(args: argparse.Namespace) -> list[tuple[str, Path, Path, int]]:
    """(label, net, out, seed) for each .caffemodel the arguments ask for."""
    if args.net is not None:
        if args.out is None or args.seed is None:
            raise HarrisonError("--net needs --out (the .caffemodel to write) and --seed")
        if not args.net.exists():
            raise HarrisonError(f"{args.net}: net not found")
        return [(str(args.out), args.net.resolve(), args.out.resolve(), args.seed)]
    config = config_from_args(args)
    features = config.section("features")
    unknown = sorted(set(args.feature or ()) - set(features))
    if unknown:
        raise HarrisonError(f"{config.path}: no feature {', '.join(unknown)} under 'features' (there: {', '.join(features)})")
    plan = []
    for name, spec in features.items():
        if (args.feature and name not in args.feature) or spec.get("weights") is not None:
            continue
        if "init_seed" not in spec:
            raise HarrisonError(f"{config.path}: features.{name} has weights: null but no init_seed; add one")
        net = config.resolve(config.section("features", name, "net"))
        if not net.exists():
            raise HarrisonError(f"{config.path}: features.{name}.net {net} not found")
        plan.append((name, net, config.workdir / "weights" / f"{name}.caffemodel", int(spec["init_seed"])))
    if args.feature and not plan:
        raise HarrisonError(f"{config.path}: the feature(s) {', '.join(args.feature)} have weights of their own; nothing to make")
    return plan


def run(args: argparse.Namespace) -> int:
    plan = planned(args)
    engine: Engine | None = None
    for label, net, out, seed in plan:
        if is_current(net, out, seed):
            print(f"{label}: {out} is current (seed {seed})")
            continue
        if engine is None:
            engine, reason = get_engine(args.engine, args.gpu)
            print(f"engine: {engine.name} ({reason})", file=sys.stderr)
        make_weights(engine, net, out, seed)
        print(f"{label}: wrote {out} (seed {seed}, {engine.name} engine)")
    if not plan:
        print("every feature net has weights of its own; nothing to make")
    return 0
