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
    """The config named by ``--config`` with ``--workdir`` applied."""
    return load_config(args.config, args.workdir)
