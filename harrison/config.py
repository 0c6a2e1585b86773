"""Run configurations (YAML in configs/): which data, which nets, which solvers, where outputs go.

Relative paths in a config resolve against the folder that holds the config file. Numbers of nets and
solvers are never here: they live in the prototxt files that a config names.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml

from harrison.errors import HarrisonError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"


class Config(dict):
    """A loaded config: a dict of the YAML, plus the file it came from and path resolution."""

    def __init__(self, data: dict[str, Any], path: Path, workdir: Path):
        super().__init__(data)
        self.path = path
        self.workdir = workdir

    def resolve(self, value: str | os.PathLike) -> Path:
        """A path from the config, absolute, resolved against the config file's folder."""
        value = Path(os.path.expanduser(str(value)))
        return value if value.is_absolute() else (self.path.parent / value).resolve()

    def section(self, *keys: str) -> Any:
        """``config["a"]["b"]``, with an error naming the config file and the missing key."""
        node: Any = self
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                where = ".".join(keys[: depth + 1])
                raise HarrisonError(f"{self.path}: missing key '{where}'; see configs/demo.yaml for the layout")
            node = node[key]
        return node


def load_config(path: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None) -> Config:
    """Load a YAML config; ``workdir`` overrides its ``workdir`` (default ``runs/<name>`` beside configs/)."""
    path = Path(path or DEFAULT_CONFIG).resolve()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarrisonError(f"{path}: config not found; pass --config with a file from configs/") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise HarrisonError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the file") from None
    if not isinstance(data, dict) or "name" not in data:
        raise HarrisonError(f"{path}: a config is a YAML mapping with at least 'name'; see configs/demo.yaml")
    config = Config(data, path, Path())
    chosen = workdir if workdir is not None else data.get("workdir", f"../runs/{data['name']}")
    config.workdir = Path(workdir).resolve() if workdir is not None else config.resolve(chosen)
    return config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--config`` and ``--workdir`` options every pipeline stage takes."""
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="run config (YAML; default: configs/demo.yaml)")
    parser.add_argument("--workdir", type=Path, default=None, help="output folder of the run (default: the config's workdir)")


def config_from_args(args: argparse.Namespace) -> Config:
    """The config named by ``--config`` with ``--workdir`` applied, its ``caffe`` setting put in force."""
    config = load_config(args.config, args.workdir)
    apply_caffe_setting(config)
    return config


def apply_caffe_setting(config: Config) -> None:
    """Pass the config's optional ``caffe.root`` or ``caffe.prefix`` on as ``HARRISON_CAFFE_ROOT`` or
    ``HARRISON_CAFFE_PREFIX``, which engine discovery reads; a variable already set in the environment wins."""
    section = config.get("caffe") or {}
    if not isinstance(section, dict) or set(section) - {"root", "prefix"}:
        raise HarrisonError(f"{config.path}: 'caffe' takes 'root' (a Caffe root folder) or 'prefix' (a command prefix)")
    if os.environ.get("HARRISON_CAFFE_ROOT") or os.environ.get("HARRISON_CAFFE_PREFIX"):
        return
    if section.get("prefix"):
        os.environ["HARRISON_CAFFE_PREFIX"] = str(section["prefix"])
    elif section.get("root"):
        os.environ["HARRISON_CAFFE_ROOT"] = str(config.resolve(section["root"]))


PATH_KEYS = frozenset({"workdir", "crawl", "image_root", "release", "net", "preprocess", "weights", "solver", "deploy", "root"})


def derive_config(base: str | os.PathLike, out: str | os.PathLike, updates: dict[str, str]) -> Path:
    """Write a copy of config ``base`` to ``out`` with dotted-key ``updates`` applied.

    Every relative path of ``base`` is made absolute (the copy lives elsewhere), and update values
    for path keys resolve against the current directory. ``out`` then records exactly what a run used.
    """
    from harrison.files import write_text

    config = load_config(base)
    data = _absolute_paths(dict(config), config.path.parent)
    for dotted, value in updates.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        parsed = yaml.safe_load(value) if value else None
        if leaf in PATH_KEYS and isinstance(parsed, str):
            parsed = str(Path(os.path.expanduser(parsed)).resolve())
        node[leaf] = parsed
    return write_text(out, yaml.safe_dump(data, sort_keys=False))


def _absolute_paths(node: Any, base: Path) -> Any:
    if isinstance(node, dict):
        return {
            key: (str((base / value).resolve()) if key in PATH_KEYS and isinstance(value, str) else _absolute_paths(value, base))
            for key, value in node.items()
        }
    return node


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harrison.config", description="write a derived run config")
    parser.add_argument("base", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted key, e.g. dataset.release=DIR")
    args = parser.parse_args(argv)
    updates = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        updates[key] = value
    print(derive_config(args.base, args.out, updates))


if __name__ == "__main__":
    try:
        _main()
    except HarrisonError as exc:
        raise SystemExit(f"error: {exc}") from None
