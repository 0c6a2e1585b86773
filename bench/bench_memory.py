"""Peak memory of a full-size Table 1 training set-up, on synthetic features of the real sizes.

The run folder holds what extraction would leave for the real release: 52,383 training and 5,000 test images,
997 classes (1 to 10 per image), a 4,096-d fc7 file per feature (object, scene) and split. Then, each step in
its own process so that its peak resident set is its own:

1. ``data``: ``harrison.classifier_data.build_data`` and ``materialise`` for ``object_scene``: the 8,192-d
   concatenated HDF5Data files (``data`` + multi-hot ``label``) and the prototxt copies;
2. ``train-<engine>``: a few iterations of the full classifier (prototxt/classifier: 8,192 -> 4,096 -> 4,096 -> 997,
   batch 100) through ``engine.train`` on a copy of the solver with a small max_iter, testing on the 5,000 test
   rows at the start and the end, as the paper's solver does every 5,000 iterations.

Printed: peak RSS per step (the process itself and, for real Caffe, its ``caffe train`` child), the HDF5 sizes,
and the size the training data would take if it were held in memory whole. Files go to bench/out/memory/
(git-ignored, about 5.6 GB; ``--clean`` removes them afterwards); the figures to bench/out/memory.json.

    .venv/bin/python bench/bench_memory.py [--engines torch,caffe] [--iterations 20] [--clean]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harrison.config import derive_config, load_config  # noqa: E402
from harrison.dataset import lists  # noqa: E402
from harrison.features import IDENTITY_KEYS, STRING, feature_path  # noqa: E402
from harrison.files import sha256, write_json  # noqa: E402
from harrison.proto.io import read_solver, write_prototxt  # noqa: E402

OUT = REPO / "bench" / "out"
FOLDER = OUT / "memory"
TRAIN, TEST, CLASSES, DIM = 52_383, 5_000, 997, 4096
FEATURES = ("object", "scene")
MODEL = "object_scene"
CHUNK = 4096
GIB = float(1 << 30)


def make_run(folder: Path) -> Path:
    """The synthetic dataset and feature files (skipped when a previous run finished them); the derived config."""
    run = folder / "run"
    done = folder / "synthetic.done"
    if not done.exists():
        rng = np.random.default_rng(0)
        dataset = run / "dataset"
        counts = np.zeros(CLASSES, dtype=np.int64)
        splits = {}
        for split, count in (("train", TRAIN), ("test", TEST)):
            images = [f"instagram_dataset/synthetic/{split}_{i}.jpg" for i in range(count)]
            labels = [sorted(rng.choice(CLASSES, size=rng.integers(1, 11), replace=False).tolist()) for _ in range(count)]
            for ids in labels:
                counts[ids] += 1
            lists.write_split(lists.split_path(dataset, split), images, labels)
            splits[split] = images
        lists.write_vocab(dataset / "vocab.tsv", ((f"tag{c}", int(n)) for c, n in enumerate(counts)))
        write_json(dataset / "manifest.json", {"image_root": str(folder), "num_classes": CLASSES})
        for feature in FEATURES:
            for split, images in splits.items():
                _write_features(feature_path(run, feature, split), images,
                                sha256(lists.split_path(dataset, split)), rng)
        done.write_text("ok\n")
    solver = read_solver(REPO / "prototxt" / "classifier" / f"solver_{MODEL}.prototxt")
    solver.net = str((REPO / "prototxt" / "classifier" / solver.net).resolve())
    return _config(folder, run, solver)


def _write_features(path: Path, images: list[str], list_sha: str, rng: np.random.Generator) -> None:
    """An fc7-like file: non-negative float32 rows (post-ReLU), with the identity attributes extraction writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        features = handle.create_dataset("features", shape=(len(images), DIM), dtype=np.float32)
        for first in range(0, len(images), CHUNK):
            rows = min(CHUNK, len(images) - first)
            features[first : first + rows] = np.maximum(rng.standard_normal((rows, DIM), dtype=np.float32), 0)
        handle.create_dataset("image", data=np.array(images, dtype=object), dtype=STRING)
        handle.create_dataset("bad_image", shape=(0,), dtype=STRING)
        handle.create_dataset("bad_reason", shape=(0,), dtype=STRING)
        handle.attrs.update({key: "synthetic" for key in IDENTITY_KEYS})
        handle.attrs.update({"list_sha256": list_sha, "blob": "fc7", "on_bad_image": "zero"})


def _config(folder: Path, run: Path, solver) -> Path:
    copy = folder / f"solver_{MODEL}.prototxt"
    write_prototxt(copy, solver)
    return derive_config(REPO / "configs" / "harrison.yaml", folder / "config.yaml",
                         {"workdir": str(run), "dataset.image_root": str(folder), f"models.{MODEL}.solver": str(copy)})


def short_solver(folder: Path, iterations: int) -> None:
    """Shorten the solver copy: ``iterations`` iterations, tests at 0 and at the end, no snapshot before the last."""
    copy = folder / f"solver_{MODEL}.prototxt"
    solver = read_solver(copy)
    solver.max_iter, solver.test_interval, solver.display, solver.snapshot = iterations, iterations, 1, 0
    write_prototxt(copy, solver)


def step_data(config_path: Path) -> dict:
    from harrison.classifier_data import build_data, materialise

    config = load_config(config_path)
    began = time.time()
    data = build_data(config, MODEL)
    materialise(config, MODEL, data)
    return {"seconds": round(time.time() - began, 1)}


def step_train(config_path: Path, engine_name: str) -> dict:
    from harrison import caffelog
    from harrison.engines import get_engine

    config = load_config(config_path)
    folder = config.workdir / "models" / MODEL
    engine, _ = get_engine(engine_name)
    log = folder / f"train_{engine_name}.log"
    shutil.rmtree(folder / "snapshots", ignore_errors=True)
    (folder / "snapshots").mkdir()
    began = time.time()
    result = engine.train(folder / "solver.prototxt", log=log)
    parsed = caffelog.parse_log(log)
    return {"seconds": round(time.time() - began, 1), "iterations": result.iterations,
            "first_loss": parsed.train[0].loss if parsed.train else None,
            "last_loss": parsed.train[-1].loss if parsed.train else None}


def run_step(step: str, config_path: Path, engine: str | None = None) -> dict:
    """One step in a fresh process: its result with the peak RSS of the process and of its waited-for children."""
    command = [sys.executable, __file__, "--step", step, "--config", str(config_path)] + (["--engine", engine] if engine else [])
    done = subprocess.run(command, stdout=subprocess.PIPE, check=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _size(paths) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="torch", help="comma-separated engines for the training step (default: torch)")
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per engine (default: 20)")
    parser.add_argument("--clean", action="store_true", help="remove bench/out/memory/ afterwards")
    parser.add_argument("--step", choices=("data", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        result = step_data(args.config) if args.step == "data" else step_train(args.config, args.engine)
        result["peak_rss_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result["peak_rss_children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        print(json.dumps(result))
        return

    began = time.time()
    print(f"synthetic run in {FOLDER} ...", file=sys.stderr)
    config_path = make_run(FOLDER)
    short_solver(FOLDER, args.iterations)
    config = load_config(config_path)
    results = {"data": run_step("data", config_path)}
    for engine in args.engines.split(","):
        results[f"train-{engine}"] = run_step("train", config_path, engine)
    data_dir = config.workdir / "models" / MODEL / "data"
    sizes = {
        "features": {f"{feature}/{split}.h5": feature_path(config.workdir, feature, split).stat().st_size
                     for feature in FEATURES for split in ("train", "test")},
        "classifier_train_files": len(list(data_dir.glob("train_*.h5"))),
        "classifier_train_bytes": _size(data_dir.glob("train_*.h5")),
        "largest_classifier_file": max(p.stat().st_size for p in data_dir.glob("*.h5")),
        "classifier_test_bytes": _size(data_dir.glob("test_*.h5")),
        "train_data_in_memory": TRAIN * (2 * DIM + CLASSES) * 4,
    }
    report = {"machine": {"platform": platform.platform(), "cpus": psutil.cpu_count(),
                          "memory_bytes": psutil.virtual_memory().total}, "iterations": args.iterations,
              "sizes": sizes, "steps": results, "seconds": round(time.time() - began, 1)}
    write_json(OUT / "memory.json", report)
    print(f"\nFull-size training set-up: {TRAIN:,} x {2 * DIM:,} train features, {TEST:,} test, {CLASSES} classes")
    print(f"machine: {report['machine']['platform']}, {report['machine']['cpus']} CPUs, "
          f"{report['machine']['memory_bytes'] / GIB:.1f} GiB\n")
    print("| step | peak RSS (process) | peak RSS (child) | seconds |")
    print("| --- | ---: | ---: | ---: |")
    for name, step in results.items():
        child = f"{step['peak_rss_children'] / GIB:.2f} GiB" if step["peak_rss_children"] > 50 << 20 else "–"
        print(f"| {name} | {step['peak_rss_self'] / GIB:.2f} GiB | {child} | {step['seconds']} |")
    print("\n| file | size |")
    print("| --- | ---: |")
    for name, size in sizes["features"].items():
        print(f"| features/{name} | {size / GIB:.2f} GiB |")
    print(f"| models/{MODEL}/data/train_*.h5 ({sizes['classifier_train_files']} files) | {sizes['classifier_train_bytes'] / GIB:.2f} GiB |")
    print(f"| largest classifier data file | {sizes['largest_classifier_file'] / GIB:.2f} GiB |")
    print(f"| models/{MODEL}/data/test_*.h5 | {sizes['classifier_test_bytes'] / GIB:.2f} GiB |")
    print(f"| the training data held whole in memory (for comparison) | {sizes['train_data_in_memory'] / GIB:.2f} GiB |")
    if args.clean:
        shutil.rmtree(FOLDER)


if __name__ == "__main__":
    main()
