"""Stage manifests: what a stage read, wrote and how, so that a rerun can skip current work.

A manifest is ``manifest.json`` in the stage's output folder::

    {"stage": "extract", "created": "...", "inputs": {"path": "sha256", ...},
     "outputs": {"path": "sha256", ...}, "settings": {...}, "engine": {...}, "versions": {...}}

A stage is *current* when its manifest exists, every recorded input still has the recorded checksum,
every output still exists with its checksum, and the settings are the same.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from harrison.files import read_json, sha256, write_json

MANIFEST_NAME = "manifest.json"


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the key libraries, for the record."""
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    from importlib import metadata

    for package in ("harrison", "numpy", "h5py", "torch", "protobuf", "nltk", "pillow"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def checksums(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """Map each path (as given) to its SHA-256."""
    return {str(p): sha256(p) for p in paths}


def write_manifest(
    folder: str | os.PathLike,
    stage: str,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    outputs: Iterable[str | os.PathLike] = (),
    settings: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``folder/manifest.json`` atomically; call it last, after every output is in place."""
    record: dict[str, Any] = {
        "stage": stage,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": checksums(inputs),
        "outputs": checksums(outputs),
        "settings": dict(settings or {}),
        "versions": versions(),
    }
    record.update(extra or {})
    return write_json(Path(folder) / MANIFEST_NAME, record)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's manifest, or None when there is none."""
    path = Path(folder) / MANIFEST_NAME
    return read_json(path) if path.exists() else None


def is_current(
    folder: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    settings: Mapping[str, Any] | None = None,
) -> bool:
    """True when the stage in ``folder`` finished with these inputs and settings and its outputs are intact."""
    manifest = read_manifest(folder)
    if manifest is None:
        return False
    wanted_inputs = {str(p) for p in inputs}
    if set(manifest.get("inputs", {})) != wanted_inputs:
        return False
    if settings is not None and manifest.get("settings") != _normalise(settings):
        return False
    for path, digest in list(manifest["inputs"].items()) + list(manifest.get("outputs", {}).items()):
        if not Path(path).exists() or sha256(path) != digest:
            return False
    return True


def _normalise(settings: Mapping[str, Any]) -> Any:
    import json

    return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))
