"""``harrison recommend PHOTO...``: the top-K hashtags of your own photos from a trained Table 1 classifier.

Each photo goes through the same steps as a test image: decoded and preprocessed as extraction does
(harrison.images), fc7 of every feature net the model uses, the classifier's input built as training built
it (the config's features concatenated in its order, the halves the model does not use zero), then the
model's materialised deploy net with its final snapshot. Any Pillow format and size is accepted; a photo
that cannot be read is reported and the others are still answered (exit status 1 when any failed).

``--model`` takes a model name of the config or a trained model's folder (``runs/<name>/models/<model>/``); from a
folder the run folder and the model name follow, and the config is the run's copy (``runs/<name>/config.yaml``,
which scripts/reproduce_table1.sh writes for the real release) or else the one its dataset was built from.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from harrison.classifier_data import feature_dim, input_blob, model_features, score_blob
from harrison.config import DEFAULT_CONFIG, Config, add_config_arguments, config_from_args, load_config
from harrison.dataset.lists import read_vocab
from harrison.engines import ENGINE_CHOICES, Engine, get_engine
from harrison.errors import HarrisonError
from harrison.features import feature_path, read_identity
from harrison.files import sha256
from harrison.images import ImageError, load_preprocess_spec, load_rgb, preprocess
from harrison.manifest import read_manifest
from harrison.metrics import top_k
from harrison.proto.io import read_net
from harrison.stages.evaluate import check_weights, trained
from harrison.stages.extract import feature_files
from harrison.stages.train import models_of

DEFAULT_MODEL = "object_scene"
BATCH_SIZE = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="image files (JPEG, PNG, any Pillow format)")
    parser.add_argument("-k", type=int, default=5, help="hashtags per photo (default: 5)")
    add_config_arguments(parser)
    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|DIR",
                        help=f"a trained model of the config, or a trained model's folder such as runs/demo/models/object "
                             f"(default: {DEFAULT_MODEL})")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto", help="which engine runs the nets (default: auto)")
    parser.add_argument("--gpu", type=int, default=None, help="GPU id (default: CPU)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"photos per forward pass (default: {BATCH_SIZE})")
    parser.add_argument("--json", action="store_true", help="print a JSON list: per photo its tags and scores, or its error")


def run(args: argparse.Namespace) -> int:
    config, model = config_and_model(args)
    model = models_of(config, model)[0]
    if not (config.workdir / "dataset" / "manifest.json").exists():
        again = "" if config.path == DEFAULT_CONFIG else f" --config {config.path}"
        raise HarrisonError(f"{config.workdir}: nothing is trained there yet; run scripts/reproduce_table1.sh{again} "
                            "(it builds the dataset and trains the models), then recommend again")
    tags = [tag for _, tag, _ in read_vocab(config.workdir / "dataset")]
    if not 1 <= args.k <= len(tags):
        raise HarrisonError(f"-k {args.k}: choose 1 to {len(tags)} (the number of hashtags the model knows)")
    if args.batch_size < 1:
        raise HarrisonError(f"--batch-size {args.batch_size}: must be at least 1")
    deploy, weights, _ = trained(config, model)
    dims = {feature: feature_dim(config, feature) for feature in config.section("features")}
    check_weights(deploy, weights, len(tags), sum(dims.values()))
    used = model_features(config, model)
    files = {feature: _feature_files(config, feature) for feature in used}

    specs = {feature: load_preprocess_spec(paths["preprocess"]) for feature, paths in files.items()}
    readable: list[Path] = []
    inputs: dict[str, list[np.ndarray]] = {feature: [] for feature in used}
    errors: dict[Path, str] = {}
    largest_input = max((spec.input_size for spec in specs.values()), key=lambda size: size[0] * size[1])
    for photo in args.photos:
        try:
            rgb = load_rgb(photo, largest_input)
        except ImageError as exc:
            errors[photo] = exc.reason
            continue
        readable.append(photo)
        for feature, spec in specs.items():
            inputs[feature].append(preprocess(rgb, spec))
    results: dict[Path, np.ndarray] = {}
    if readable:
        engine, reason = get_engine(args.engine, args.gpu)
        print(f"engine: {engine.name} ({reason})", file=sys.stderr)
        batches = {feature: np.stack(arrays) for feature, arrays in inputs.items()}
        scores = classifier_scores(engine, model, batches, dims, files, deploy, weights, args.batch_size)
        results = dict(zip(readable, scores))
    tops = dict(zip(results, top_k(np.stack(list(results.values())), args.k))) if results else {}

    answers = []
    for photo in args.photos:
        if photo in errors:
            answers.append({"photo": str(photo), "error": errors[photo]})
        else:
            answers.append({"photo": str(photo), "tags": [{"tag": tags[c], "score": round(float(results[photo][c]), 6)} for c in tops[photo]]})
    if args.json:
        print(json.dumps(answers, indent=2))
    for answer in answers:
        if "error" in answer:
            print(f"{answer['photo']}: cannot read this photo: {answer['error']}", file=sys.stderr)
        elif not args.json:
            width = max(len(t["tag"]) for t in answer["tags"]) + 1
            print(answer["photo"])
            for rank, tag in enumerate(answer["tags"], start=1):
                print(f"  {rank:2d}. #{tag['tag']:<{width}} {tag['score']:.4f}")
    return 1 if errors else 0


def is_folder(model: str) -> bool:
    """Whether ``--model`` names a folder (it has a path separator or is ``.``/``..``) rather than a model name."""
    return model in (".", "..") or "/" in model or os.sep in model


def config_and_model(args: argparse.Namespace) -> tuple[Config, str]:
    """The run's config and the model name that ``--model`` (a name, or a trained model's folder) stands for."""
    if not is_folder(args.model):
        return config_from_args(args), args.model
    folder = Path(args.model).resolve()
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is None or manifest.get("stage") != "train" or folder.parent.name != "models":
        raise HarrisonError(f"--model {args.model}: not a trained model's folder (one with the manifest.json of "
                            "harrison train, such as runs/demo/models/object); pass such a folder or a model name")
    workdir = folder.parent.parent
    if args.workdir is not None and args.workdir.resolve() != workdir:
        raise HarrisonError(f"--model {args.model} is a model of {workdir}, but --workdir is {args.workdir}; "
                            "leave out --workdir")
    return load_config(run_config(workdir, args.config), workdir), folder.name


def run_config(workdir: Path, given: Path) -> Path:
    """The config of the run in ``workdir``: its copy ``config.yaml``, else the dataset's config, else ``given``."""
    copy = workdir / "config.yaml"
    if copy.is_file():
        return copy
    dataset = read_manifest(workdir / "dataset") or {}
    built_with = Path(dataset["config"]) if dataset.get("config") else None
    return built_with if built_with is not None and built_with.is_file() else given


def _feature_files(config: Config, feature: str) -> dict[str, Path]:
    """The feature net's files, checked against the weights that made the features the model was trained on."""
    files = feature_files(config, feature)
    made = read_identity(feature_path(config.workdir, feature, "train"))
    if made is not None and made["weights_sha256"] != sha256(files["weights"]):
        raise HarrisonError(f"{files['weights']} is not the weights file that made {feature_path(config.workdir, feature, 'train')} "
                            f"(sha256 {made['weights_sha256'][:12]}...), which the classifier was trained on; "
                            f"point features.{feature}.weights in {config.path} at that file")
    return files


def classifier_scores(engine: Engine, model: str, inputs: Mapping[str, np.ndarray], dims: Mapping[str, int],
                      files: Mapping[str, Mapping[str, Path]], deploy: Path, weights: Path, batch_size: int) -> np.ndarray:
    """Scores (N x C) of preprocessed photos (per used feature, N x 3 x H x W in its net's recipe).

    fc7 of each used feature net fills its part of the classifier's input (the config's feature order, ``dims``),
    the other parts stay zero, and the model's deploy net scores the result.
    """
    count = len(next(iter(inputs.values())))
    data = np.zeros((count, sum(dims.values())), dtype=np.float32)
    offsets = dict(zip(dims, np.cumsum([0, *dims.values()])[:-1].tolist()))
    for feature, batch_all in inputs.items():
        spec = load_preprocess_spec(files[feature]["preprocess"])
        with engine.load_net(files[feature]["net"], files[feature]["weights"]) as runner:
            for first in range(0, count, batch_size):
                batch = batch_all[first : first + batch_size]
                values = runner.forward({spec.input_blob: batch}, [spec.feature_blob])[spec.feature_blob]
                values = np.asarray(values, dtype=np.float32).reshape(len(batch), -1)
                if values.shape[1] != dims[feature]:
                    raise HarrisonError(f"{files[feature]['net']}: blob {spec.feature_blob} is {values.shape[1]}-d, but the "
                                        f"model {model} was trained on {dims[feature]}-d {feature} features; retrain it")
                data[first : first + len(batch), offsets[feature] : offsets[feature] + dims[feature]] = values
    net = read_net(deploy)
    blob_in, blob_out = input_blob(net, deploy), score_blob(net, deploy)
    scores = []
    with engine.load_net(deploy, weights) as runner:
        for first in range(0, count, batch_size):
            batch = data[first : first + batch_size]
            scores.append(np.asarray(runner.forward({blob_in: batch}, [blob_out])[blob_out], dtype=np.float32).reshape(len(batch), -1))
    return np.concatenate(scores)
