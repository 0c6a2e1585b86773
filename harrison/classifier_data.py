"""The classifier's inputs: HDF5Data files built from the feature files, and materialised prototxt copies.

For a model of the config (its ``features`` name the halves it fills) this writes into ``models/<model>/``:

- ``data/{train,test}_NNN.h5``: ``data`` (N x D_total float32, the config's features concatenated in its
  order, the halves the model does not use zero), ``label`` (N x C float32 multi-hot) and ``image``; train
  rows in a permutation seeded by the config's ``dataset.seed`` (the nets keep ``shuffle`` off); files of at
  most ``max_file_bytes`` so that neither this builder nor the HDF5Data layer holds more than one in memory;
- ``data/{train,test}.txt``: the HDF5Data source lists (absolute paths);
- ``solver.prototxt``, ``train_test.prototxt``, ``deploy.prototxt``: copies of the config's prototxt with only
  the paths (HDF5Data sources, the solver's ``net``, ``snapshot_prefix``), the output layer's ``num_output``
  (the dataset's class count) and the deploy net's input width (D_total) rewritten.

Every check that compares inputs (rows against labels, the list a feature file was made from, dimensions)
runs before anything is written, and names both sides.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
from tqdm import tqdm

from harrison.config import PROJECT_ROOT, Config
from harrison.dataset.lists import SPLITS, dataset_info, read_split, split_path
from harrison.errors import HarrisonError
from harrison.features import STRING, feature_path, read_identity, read_images
from harrison.files import sha256, write_text
from harrison.images import load_preprocess_spec
from harrison.manifest import is_current, write_manifest
from harrison.proto import caffe_pb2
from harrison.proto.io import read_net, read_solver, write_prototxt

MAX_FILE_BYTES = 256 << 20


@dataclasses.dataclass
class SplitPlan:
    """Which feature rows and labels make one split's data."""

    images: list[str]
    labels: list[list[int]]
    rows: dict[str, np.ndarray]
    """Per used feature: the row of each image in that feature's file."""


@dataclasses.dataclass
class ModelData:
    """A model's prepared inputs."""

    folder: Path
    dims: dict[str, int]
    """D per feature, in the config's order."""
    num_classes: int
    counts: dict[str, int]
    lists: dict[str, Path]
    """The HDF5Data source list of each split."""

    @property
    def total_dim(self) -> int:
        return sum(self.dims.values())


def model_folder(config: Config, model: str) -> Path:
    return config.workdir / "models" / model


def model_features(config: Config, model: str) -> list[str]:
    """The features ``model`` uses, checked against the config's features."""
    names = list(config.section("features"))
    used = list(config.section("models", model, "features"))
    unknown = [name for name in used if name not in names]
    if unknown or not used:
        raise HarrisonError(f"{config.path}: models.{model}.features names {unknown or 'nothing'}; use some of {', '.join(names)}")
    return used


def feature_dim(config: Config, feature: str) -> int:
    """D of a feature: from its train file when extracted, else the num_output of the layer making its blob."""
    path = feature_path(config.workdir, feature, "train")
    if path.exists():
        with h5py.File(path, "r") as handle:
            return int(handle["features"].shape[1])
    spec = load_preprocess_spec(config.resolve(config.section("features", feature, "preprocess")))
    net_path = config.resolve(config.section("features", feature, "net"))
    from harrison.proto.io import upgrade_net

    for layer in reversed(upgrade_net(read_net(net_path)).layer):
        if spec.feature_blob in layer.top and layer.type == "InnerProduct":
            return int(layer.inner_product_param.num_output)
    raise HarrisonError(f"{net_path}: no InnerProduct layer makes blob {spec.feature_blob!r}; extract feature '{feature}' first")


def plan_split(config: Config, model: str, split: str) -> SplitPlan:
    """Check the used features' files of ``split`` against the dataset's list and map images to rows."""
    dataset_dir = config.workdir / "dataset"
    list_file = split_path(dataset_dir, split)
    images, labels = read_split(dataset_dir, split)
    list_sha = sha256(list_file)
    available: set[str] | None = None
    found: dict[str, list[str]] = {}
    for feature in model_features(config, model):
        path = feature_path(config.workdir, feature, split)
        if not path.exists():
            raise HarrisonError(f"{path}: missing; run harrison extract --feature {feature} --split {split} first")
        with h5py.File(path, "r") as handle:
            made_from = handle.attrs.get("list_sha256", "")
            made_from = made_from.decode() if isinstance(made_from, bytes) else str(made_from)
            rows = int(handle["features"].shape[0])
        if made_from != list_sha:
            raise HarrisonError(f"{path} was extracted from a list with sha256 {made_from[:12]}..., but {list_file} has "
                                f"sha256 {list_sha[:12]}... (another dataset or split); rerun harrison extract --feature {feature} --split {split}")
        names = read_images(path)
        if rows != len(names) or not set(names) <= set(images):
            raise HarrisonError(f"{path} has {rows} rows and {len(names)} image names that do not match the "
                                f"{len(images)} images of {list_file}; rerun harrison extract --feature {feature} --split {split}")
        found[feature] = names
        available = set(names) if available is None else available & set(names)
    keep = [i for i, image in enumerate(images) if image in available]
    kept = [images[i] for i in keep]
    rows_of = {}
    for feature, names in found.items():
        index = {name: row for row, name in enumerate(names)}
        rows_of[feature] = np.array([index[name] for name in kept], dtype=np.int64)
    if len(kept) < len(images):
        print(f"{split}: {len(images) - len(kept)} images left out of the extraction are left out of the classifier's data", file=sys.stderr)
    return SplitPlan(kept, [labels[i] for i in keep], rows_of)


def build_data(config: Config, model: str, *, max_file_bytes: int = MAX_FILE_BYTES) -> ModelData:
    """Write ``models/<model>/data/`` unless its manifest is current; every check runs before any write."""
    folder = model_folder(config, model)
    data_dir = folder / "data"
    dataset_dir = config.workdir / "dataset"
    num_classes = int(dataset_info(dataset_dir)["num_classes"])
    dims = {feature: feature_dim(config, feature) for feature in config.section("features")}
    used = model_features(config, model)
    plans = {split: plan_split(config, model, split) for split in SPLITS}
    for feature in used:
        train, test = (feature_path(config.workdir, feature, split) for split in SPLITS)
        made = [read_identity(train), read_identity(test)]
        differing = [key for key in ("net_sha256", "weights_sha256", "preprocess_sha256", "blob") if made[0][key] != made[1][key]]
        with h5py.File(test, "r") as handle:
            test_dim = int(handle["features"].shape[1])
        if differing or test_dim != dims[feature]:
            raise HarrisonError(f"{train} and {test} come from different nets or weights ({', '.join(differing) or 'width'}); "
                                f"rerun harrison extract --feature {feature}")
    for split, plan in plans.items():
        for number, ids in enumerate(plan.labels):
            if min(ids) < 0 or max(ids) >= num_classes:
                raise HarrisonError(f"{split_path(dataset_dir, split)}: image {plan.images[number]} has class id "
                                    f"{max(ids)} but the dataset has {num_classes} classes; rebuild the dataset")
    seed = int(config.section("dataset", "seed"))
    row_bytes = 4 * (sum(dims.values()) + num_classes)
    rows_per_file = max(1, max_file_bytes // row_bytes)
    inputs = [split_path(dataset_dir, split) for split in SPLITS]
    inputs += [feature_path(config.workdir, feature, split) for feature in used for split in SPLITS]
    settings = {"model": model, "features": used, "dims": dims, "num_classes": num_classes, "seed": seed,
                "rows_per_file": rows_per_file}
    lists = {split: data_dir / f"{split}.txt" for split in SPLITS}
    counts = {split: len(plan.images) for split, plan in plans.items()}
    result = ModelData(folder, dims, num_classes, counts, lists)
    if is_current(data_dir, inputs=inputs, settings=settings):
        return result
    outputs = []
    for split, plan in plans.items():
        order = np.random.default_rng(seed).permutation(len(plan.images)) if split == "train" else np.arange(len(plan.images))
        files = _write_split(data_dir, split, plan, order, dims, used, num_classes, rows_per_file, config)
        write_text(lists[split], "".join(f"{path}\n" for path in files))
        outputs += [*files, lists[split]]
    write_manifest(data_dir, "classifier-data", inputs=inputs, outputs=outputs, settings=settings)
    return result


def _write_split(data_dir: Path, split: str, plan: SplitPlan, order: np.ndarray, dims: dict[str, int],
                 used: Sequence[str], num_classes: int, rows_per_file: int, config: Config) -> list[Path]:
    for stale in data_dir.glob(f"{split}_*.h5"):
        stale.unlink()
    offsets = dict(zip(dims, np.cumsum([0, *dims.values()])[:-1].tolist()))
    total = sum(dims.values())
    files = []
    sources = {feature: h5py.File(feature_path(config.workdir, feature, split), "r") for feature in used}
    try:
        chunks = range(0, len(order), rows_per_file)
        for number, first in enumerate(tqdm(chunks, desc=f"data {split}", unit="file", file=sys.stderr)):
            picked = order[first : first + rows_per_file]
            data = np.zeros((len(picked), total), dtype=np.float32)
            for feature in used:
                rows = plan.rows[feature][picked]
                ascending = np.argsort(rows)
                block = sources[feature]["features"][rows[ascending]]
                data[ascending, offsets[feature] : offsets[feature] + dims[feature]] = block
            label = np.zeros((len(picked), num_classes), dtype=np.float32)
            for row, index in enumerate(picked):
                label[row, plan.labels[index]] = 1.0
            path = data_dir / f"{split}_{number:03d}.h5"
            partial = path.with_name(path.name + ".partial")
            try:
                data_dir.mkdir(parents=True, exist_ok=True)
                with h5py.File(partial, "w") as out:
                    out.create_dataset("data", data=data)
                    out.create_dataset("label", data=label)
                    out.create_dataset("image", data=np.array([plan.images[i] for i in picked], dtype=object), dtype=STRING)
                os.replace(partial, path)
            except OSError as exc:
                partial.unlink(missing_ok=True)
                raise HarrisonError(f"cannot write {path}: {exc} (is the disk full?); free space and rerun harrison train") from exc
            files.append(path.resolve())
            del data, label
    finally:
        for handle in sources.values():
            handle.close()
    return files


# ------------------------------------------------------------------------------------ prototxt copies


def _producer(net: caffe_pb2.NetParameter, blob: str, before: int) -> int | None:
    """Index of the last layer before ``before`` whose tops include ``blob``."""
    for index in range(before - 1, -1, -1):
        if blob in net.layer[index].top:
            return index
    return None


def output_layer(net: caffe_pb2.NetParameter, path: Path) -> caffe_pb2.LayerParameter:
    """The InnerProduct layer whose output feeds the loss (train net) or the Sigmoid (deploy net)."""
    for index in range(len(net.layer) - 1, -1, -1):
        layer = net.layer[index]
        if layer.type in ("SigmoidCrossEntropyLoss", "Sigmoid") and layer.bottom:
            blob, at = layer.bottom[0], index
            while (producer := _producer(net, blob, at)) is not None:
                if net.layer[producer].type == "InnerProduct":
                    return net.layer[producer]
                blob, at = net.layer[producer].bottom[0], producer
    raise HarrisonError(f"{path}: no InnerProduct layer feeds a SigmoidCrossEntropyLoss or Sigmoid layer; the classifier needs one")


def score_blob(net: caffe_pb2.NetParameter, path: Path) -> str:
    """The deploy net's score blob: the top of its last Sigmoid layer."""
    for layer in reversed(net.layer):
        if layer.type == "Sigmoid":
            return layer.top[0]
    raise HarrisonError(f"{path}: no Sigmoid layer; the deploy net must end in Sigmoid scores")


def input_blob(net: caffe_pb2.NetParameter, path: Path) -> str:
    """The deploy net's input blob."""
    if len(net.input):
        return net.input[0]
    for layer in net.layer:
        if layer.type == "Input":
            return layer.top[0]
    raise HarrisonError(f"{path}: no input (input/input_shape or an Input layer)")


def _set_input_width(net: caffe_pb2.NetParameter, width: int, path: Path) -> None:
    if len(net.input_shape):
        net.input_shape[0].dim[1] = width
    elif len(net.input_dim):
        net.input_dim[1] = width
    else:
        for layer in net.layer:
            if layer.type == "Input":
                layer.input_param.shape[0].dim[1] = width
                return
        raise HarrisonError(f"{path}: no input dimensions to set; declare an Input layer")


def _resolve_from(path: str, solver_path: Path) -> Path:
    """A path named in a solver: as Caffe resolves it from the working folder, tried from the solver's folder and the project."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    for base in (solver_path.parent, PROJECT_ROOT):
        if (base / candidate).exists():
            return (base / candidate).resolve()
    raise HarrisonError(f"{solver_path}: net {path!r} not found next to the solver or in {PROJECT_ROOT}")


def source_files(config: Config, model: str) -> dict[str, Path]:
    """The config's solver, the train/test net it names, and the deploy net of ``model``."""
    solver_path = config.resolve(config.section("models", model, "solver"))
    solver = read_solver(solver_path)
    if not solver.net:
        raise HarrisonError(f"{solver_path}: the classifier's solver must name its train/test net with `net:`")
    return {"solver": solver_path, "train_test": _resolve_from(solver.net, solver_path),
            "deploy": config.resolve(config.section("models", model, "deploy"))}


def materialise(config: Config, model: str, data: ModelData) -> dict[str, Path]:
    """Write the model's solver, train/test and deploy copies with paths, class count and input width set."""
    sources = source_files(config, model)
    folder = data.folder
    solver = read_solver(sources["solver"])
    net = read_net(sources["train_test"])
    deploy = read_net(sources["deploy"])
    phases = {caffe_pb2.TRAIN: "train", caffe_pb2.TEST: "test"}
    sources_set = set()
    for layer in net.layer:
        if layer.type != "HDF5Data":
            continue
        if len(layer.include) != 1 or not layer.include[0].HasField("phase"):
            raise HarrisonError(f"{sources['train_test']}: HDF5Data layer {layer.name!r} needs include {{ phase: TRAIN }} or TEST")
        split = phases[layer.include[0].phase]
        layer.hdf5_data_param.source = str(data.lists[split])
        sources_set.add(split)
    if sources_set != {"train", "test"}:
        raise HarrisonError(f"{sources['train_test']}: needs one HDF5Data layer for TRAIN and one for TEST")
    output_layer(net, sources["train_test"]).inner_product_param.num_output = data.num_classes
    output_layer(deploy, sources["deploy"]).inner_product_param.num_output = data.num_classes
    _set_input_width(deploy, data.total_dim, sources["deploy"])
    copies = {name: folder / f"{name}.prototxt" for name in ("solver", "train_test", "deploy")}
    solver.net = str(copies["train_test"])
    solver.snapshot_prefix = str(folder / "snapshots" / model)
    (folder / "snapshots").mkdir(parents=True, exist_ok=True)
    write_prototxt(copies["train_test"], net)
    write_prototxt(copies["deploy"], deploy)
    write_prototxt(copies["solver"], solver)
    return copies
