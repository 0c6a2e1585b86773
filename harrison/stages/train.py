"""``harrison train``: build a Table 1 classifier's inputs and run its solver.

For each model (``--model`` picks one; default all of the config's) this builds ``models/<model>/data/``
from the feature files, writes the materialised solver and nets, and runs the engine's solver, resuming
from the newest ``.solverstate`` in ``snapshots/`` after an interruption (passing over snapshots whose
weights are not finite, which a diverged run leaves). The log is kept as
``train.log`` (Caffe's format) and turned into ``loss.csv`` and ``loss.png``. A model whose final snapshot
exists and whose manifest is current is skipped.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from harrison import caffelog
from harrison.classifier_data import ModelData, build_data, materialise, model_folder
from harrison.config import Config, add_config_arguments, config_from_args
from harrison.engines import ENGINE_CHOICES, get_engine
from harrison.errors import HarrisonError
from harrison.files import sha256
from harrison.manifest import checksums, read_manifest, write_manifest
from harrison.proto import caffe_pb2
from harrison.proto.io import blob_to_array, layer_blobs, read_caffemodel, read_solver, read_solverstate
from harrison.stages.extract import sigterm_as_interrupt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", help="one model of the config (default: all of them)")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto", help="which engine runs the solver (default: auto)")
    parser.add_argument("--gpu", type=int, default=None, help="GPU id (default: CPU)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="start from this .caffemodel instead of the fillers (as caffe train -weights; layers match by name)")


def models_of(config: Config, model: str | None) -> list[str]:
    """``[model]`` after checking the config defines it, or all the config's models."""
    names = list(config.section("models"))
    if model is not None and model not in names:
        raise HarrisonError(f"--model {model!r}: {config.path} defines {', '.join(names)}")
    return [model] if model else names


def snapshot_files(solver_copy: Path) -> tuple[Path, str, int]:
    """The snapshot prefix (a relative one under the solver's folder, as the engines run there), file suffix
    ('' or '.h5') and max_iter of a materialised solver."""
    solver = read_solver(solver_copy)
    suffix = ".h5" if solver.snapshot_format == caffe_pb2.SolverParameter.HDF5 else ""
    return solver_copy.parent / solver.snapshot_prefix, suffix, int(solver.max_iter)


def final_weights(solver_copy: Path) -> Path:
    """The .caffemodel a finished run of the solver leaves."""
    prefix, suffix, max_iter = snapshot_files(solver_copy)
    return Path(f"{prefix}_iter_{max_iter}.caffemodel{suffix}")


def resumable_state(solver_copy: Path) -> tuple[Path | None, list[Path]]:
    """The newest .solverstate whose weights and history are all finite, and the newer ones passed over.

    A diverged run leaves snapshots taken at (or after) the divergence, holding NaN or inf; resuming from one
    would only diverge again at once, so the search goes back to the last snapshot that is still sound.
    """
    prefix, suffix, _ = snapshot_files(solver_copy)
    pattern = re.compile(re.escape(prefix.name) + r"_iter_(\d+)\.solverstate" + re.escape(suffix) + "$")
    states = [(int(m[1]), path) for path in prefix.parent.glob(f"{prefix.name}_iter_*.solverstate{suffix}")
              if (m := pattern.match(path.name))]
    skipped = []
    for _, path in sorted(states, reverse=True):
        if state_is_finite(path, solver_copy.parent):
            return path, skipped
        skipped.append(path)
    return None, skipped


def state_is_finite(state: Path, folder: Path) -> bool:
    """Whether a .solverstate (binary or HDF5) and its learned_net .caffemodel hold only finite values.

    ``learned_net`` resolves against ``folder`` (the solver's, where the engines run). A state or weights
    file that is missing or cannot be read counts as not finite: it cannot be resumed from either.
    """
    try:
        if state.suffix == ".h5":
            with h5py.File(state, "r") as handle:
                learned_net = handle["learned_net"][()]
                learned_net = learned_net.decode() if isinstance(learned_net, bytes) else str(learned_net)
            return _h5_finite(state) and _h5_finite(folder / learned_net)
        proto_state = read_solverstate(state)
        arrays = [blob_to_array(blob) for blob in proto_state.history]
        arrays += [blob for blobs in layer_blobs(read_caffemodel(folder / proto_state.learned_net)).values() for blob in blobs]
    except (HarrisonError, OSError, KeyError):
        return False
    return all(np.isfinite(array).all() for array in arrays)


def _h5_finite(path: Path) -> bool:
    """Whether every floating-point dataset of an HDF5 file is finite."""
    arrays = []

    def collect(_: str, item: object) -> None:
        if isinstance(item, h5py.Dataset) and item.dtype.kind == "f":
            arrays.append(item[()])

    with h5py.File(path, "r") as handle:
        handle.visititems(collect)
    return all(np.isfinite(array).all() for array in arrays)


def train_inputs(data: ModelData, copies: dict[str, Path]) -> list[Path]:
    """What a training run depends on: the materialised prototxt and every data file."""
    files = [copies["solver"], copies["train_test"], copies["deploy"]]
    for listing in data.lists.values():
        files += [Path(line) for line in listing.read_text(encoding="utf-8").split()]
    return files


def same_inputs(manifest: dict | None, inputs: list[Path], settings: dict) -> bool:
    """Whether a (running or finished) training manifest was made from exactly these inputs and settings."""
    if manifest is None:
        return False
    return manifest.get("inputs") == checksums(inputs) and manifest.get("settings") == json.loads(json.dumps(settings, sort_keys=True, default=str))


def outputs_intact(manifest: dict) -> bool:
    """Whether every output a manifest records is still there with its checksum."""
    return all(Path(path).exists() and sha256(path) == digest for path, digest in manifest.get("outputs", {}).items())


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.weights is not None and not args.weights.is_file():
        raise HarrisonError(f"--weights {args.weights}: no such .caffemodel; give the file to start training from")
    engine = None
    with sigterm_as_interrupt():
        for model in models_of(config, args.model):
            folder = model_folder(config, model)
            data = build_data(config, model)
            copies = materialise(config, model, data)
            final = final_weights(copies["solver"])
            inputs = train_inputs(data, copies) + ([args.weights.resolve()] if args.weights else [])
            if engine is None:
                engine, reason = get_engine(args.engine, args.gpu)
                print(f"engine: {engine.name} ({reason})", file=sys.stderr)
            settings = {"model": model, "engine": engine.name, "dims": data.dims, "num_classes": data.num_classes,
                        "rows": data.counts}
            manifest = read_manifest(folder)
            same_run = same_inputs(manifest, inputs, settings)
            if same_run and manifest.get("status") == "done" and final.exists() and outputs_intact(manifest):
                print(f"{folder}: trained and current, skipped", file=sys.stderr)
                continue
            log = folder / "train.log"
            state, skipped = resumable_state(copies["solver"]) if same_run else (None, [])
            if skipped:
                print(f"{model}: passing over {', '.join(path.name for path in skipped)}: weights not finite (the run "
                      "diverged there) or unreadable", file=sys.stderr)
            if not same_run:
                shutil.rmtree(final.parent, ignore_errors=True)
                final.parent.mkdir(parents=True)
                log.unlink(missing_ok=True)
            write_manifest(folder, "train", inputs=inputs, settings=settings, extra={"status": "running"})
            print(f"{model}: training {data.counts['train']} x {data.total_dim} -> {data.num_classes}"
                  + (f", resuming from {state.name}" if state else ""), file=sys.stderr)
            began = time.time()
            result = engine.train(copies["solver"], log=log, resume=state, weights=None if state else args.weights)
            seconds = time.time() - began
            parsed = caffelog.parse_log(log)
            outputs = [result.weights, caffelog.write_loss_csv(parsed, folder / "loss.csv"),
                       caffelog.plot_loss(parsed, folder / "loss.png", title=f"{model} ({engine.name})")]
            if result.state is not None:
                outputs.append(result.state)
            write_manifest(folder, "train", inputs=inputs, outputs=outputs, settings=settings,
                           extra={"status": "done", "engine": engine.manifest_entry(), "seconds": round(seconds, 1),
                                  "iterations": result.iterations, "weights": str(result.weights)})
            print(f"{model}: {result.weights} after {result.iterations} iterations ({seconds:.0f} s)", file=sys.stderr)
    return 0
