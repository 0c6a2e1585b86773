"""prototxt/: every net and solver parses, has the documented architecture and numbers, and runs in real Caffe."""
from __future__ import annotations

import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from google.protobuf import text_format

from harrison import caffelog
from harrison.images import load_preprocess_spec
from harrison.proto import caffe_pb2

PROTOTXT = Path(__file__).resolve().parent.parent / "prototxt"
NETS = sorted(p for p in PROTOTXT.rglob("*.prototxt") if not p.name.startswith("solver"))
SOLVERS = sorted(PROTOTXT.rglob("solver_*.prototxt"))
MODELS = ("object", "scene", "object_scene")


def net(path: Path) -> caffe_pb2.NetParameter:
    param = caffe_pb2.NetParameter()
    text_format.Parse(path.read_text(), param)
    return param


def solver(path: Path) -> caffe_pb2.SolverParameter:
    param = caffe_pb2.SolverParameter()
    text_format.Parse(path.read_text(), param)
    return param


def vgg_parameters(param: caffe_pb2.NetParameter) -> int:
    """Learnable parameters of a VGG-style Input -> conv/pool -> fc stack, from the prototxt alone."""
    channels, size = param.layer[0].input_param.shape[0].dim[1], param.layer[0].input_param.shape[0].dim[2]
    inputs, total = None, 0
    for layer in param.layer:
        if layer.type == "Convolution":
            conv = layer.convolution_param
            assert list(conv.kernel_size) == [3] and list(conv.pad) == [1]
            total += conv.num_output * channels * 9 + conv.num_output
            channels = conv.num_output
        elif layer.type == "Pooling":
            assert layer.pooling_param.pool == caffe_pb2.PoolingParameter.MAX
            assert (layer.pooling_param.kernel_size, layer.pooling_param.stride) == (2, 2)
            size //= 2
        elif layer.type == "InnerProduct":
            inputs = inputs or channels * size * size
            total += layer.inner_product_param.num_output * (inputs + 1)
            inputs = layer.inner_product_param.num_output
    return total


def layer_types(param: caffe_pb2.NetParameter) -> list[str]:
    return [layer.type for layer in param.layer]


def inner_products(param: caffe_pb2.NetParameter) -> list[tuple[str, int]]:
    return [(l.name, l.inner_product_param.num_output) for l in param.layer if l.type == "InnerProduct"]


@pytest.mark.parametrize("path", NETS + SOLVERS, ids=lambda p: str(p.relative_to(PROTOTXT)))
def test_every_file_parses(path):
    (solver if path.name.startswith("solver") else net)(path)


@pytest.mark.parametrize("name, classes, parameters", [("vgg16_object", 1000, 138_357_544), ("vgg16_scene", 205, 135_100_429)])
def test_vgg16_architecture(name, classes, parameters):
    param = net(PROTOTXT / name / "deploy.prototxt")
    assert list(param.layer[0].input_param.shape[0].dim) == [10, 3, 224, 224]
    assert vgg_parameters(param) == parameters
    types = layer_types(param)
    assert types.count("Convolution") == 13 and types.count("ReLU") == 15 and types.count("Pooling") == 5
    assert inner_products(param) == [("fc6", 4096), ("fc7", 4096), ("fc8", classes)]
    by_name = {layer.name: layer for layer in param.layer}
    for name_ in ("relu7", "drop7", "relu6", "drop6"):
        assert list(by_name[name_].bottom) == list(by_name[name_].top), f"{name_} is in place"
    assert list(by_name["drop7"].top) == ["fc7"] and by_name["prob"].type == "Softmax"


@pytest.mark.parametrize("kind", ["object", "scene"])
def test_demo_nets_mirror_vgg16(kind):
    real, demo = net(PROTOTXT / f"vgg16_{kind}/deploy.prototxt"), net(PROTOTXT / f"demo/vgg_{kind}/deploy.prototxt")
    assert layer_types(demo) == layer_types(real)
    assert [l.name for l in demo.layer] == [l.name for l in real.layer]
    assert list(demo.layer[0].input_param.shape[0].dim) == [10, 3, 64, 64]
    for layer in demo.layer:
        if layer.type in ("Convolution", "InnerProduct"):
            param = layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param
            assert param.weight_filler.type in ("xavier", "msra"), f"{layer.name} needs a filler that keeps fc7 alive"


def test_demo_nets_differ():
    object_net, scene_net = net(PROTOTXT / "demo/vgg_object/deploy.prototxt"), net(PROTOTXT / "demo/vgg_scene/deploy.prototxt")
    assert inner_products(object_net)[-1] != inner_products(scene_net)[-1]
    fillers = {str(l.convolution_param.weight_filler) for l in (object_net.layer[1], scene_net.layer[1])}
    assert len(fillers) == 2


@pytest.mark.parametrize("folder, width, inputs", [("classifier", 4096, 8192), ("demo/classifier", 128, 256)])
def test_classifier_stack(folder, width, inputs):
    train_test, deploy = net(PROTOTXT / folder / "train_test.prototxt"), net(PROTOTXT / folder / "deploy.prototxt")
    stack = [("fc1", width), ("fc2", width), ("fc_out", 1000)]
    assert inner_products(train_test) == stack and inner_products(deploy) == stack
    assert layer_types(train_test) == ["HDF5Data", "HDF5Data"] + ["InnerProduct", "ReLU", "Dropout"] * 2 + ["InnerProduct", "SigmoidCrossEntropyLoss"]
    assert train_test.layer[-1].loss_param.normalization == caffe_pb2.LossParameter.FULL
    assert layer_types(deploy) == ["Input"] + ["InnerProduct", "ReLU", "Dropout"] * 2 + ["InnerProduct", "Sigmoid"]
    assert list(deploy.layer[0].input_param.shape[0].dim) == [1, inputs]
    sources = {caffe_pb2.Phase.Name(l.include[0].phase): l.hdf5_data_param.source for l in train_test.layer if l.type == "HDF5Data"}
    assert sources == {"TRAIN": "train.txt", "TEST": "test.txt"}
    assert deploy.layer[-1].name == "prob" and list(deploy.layer[-1].bottom) == ["fc_out"]


def test_demo_classifier_input_is_both_demo_features():
    widths = [inner_products(net(PROTOTXT / f"demo/vgg_{kind}/deploy.prototxt"))[1][1] for kind in ("object", "scene")]
    assert net(PROTOTXT / "demo/classifier/deploy.prototxt").layer[0].input_param.shape[0].dim[1] == sum(widths)


def test_real_solvers_follow_the_paper():
    params = {model: solver(PROTOTXT / f"classifier/solver_{model}.prototxt") for model in MODELS}
    test_batch = net(PROTOTXT / "classifier/train_test.prototxt").layer[1].hdf5_data_param.batch_size
    train_batch = net(PROTOTXT / "classifier/train_test.prototxt").layer[0].hdf5_data_param.batch_size
    assert train_batch == 100
    for model, param in params.items():
        assert (param.lr_policy, param.stepsize, param.max_iter) == ("step", 30000, 100000)
        floats = (param.base_lr, param.gamma, param.momentum, param.weight_decay)
        assert floats == pytest.approx((0.1, 0.1, 0.9, 5e-7), rel=1e-6)  # float fields: compare at float precision
        assert param.test_iter[0] * test_batch == 5000
        assert param.snapshot == 10000 and param.snapshot_prefix == f"snapshots/{model}" and param.net == "train_test.prototxt"
    assert len({p.random_seed for p in params.values()}) == 3


def test_demo_solvers_are_short_step_schedules():
    for model in MODELS:
        param = solver(PROTOTXT / f"demo/classifier/solver_{model}.prototxt")
        assert param.lr_policy == "step" and param.stepsize < param.max_iter <= 1500
        real = solver(PROTOTXT / f"classifier/solver_{model}.prototxt")
        assert (param.gamma, param.momentum, param.weight_decay) == (real.gamma, real.momentum, real.weight_decay)
        assert param.max_iter % param.snapshot == 0 and param.snapshot_prefix == f"snapshots/{model}"
        assert param.test_iter[0] * net(PROTOTXT / "demo/classifier/train_test.prototxt").layer[1].hdf5_data_param.batch_size == 100


@pytest.mark.parametrize("folder", ["vgg16_object", "vgg16_scene", "demo/vgg_object", "demo/vgg_scene"])
def test_preprocess_matches_its_net(folder):
    spec = load_preprocess_spec(PROTOTXT / folder / "preprocess.yaml")
    param = net(PROTOTXT / folder / "deploy.prototxt")
    dims = list(param.layer[0].input_param.shape[0].dim)
    assert spec.input_blob == param.layer[0].top[0] and spec.input_size == tuple(dims[2:])
    assert spec.feature_blob == "fc7" and spec.raw_scale == 255
    assert spec.mean.shape == (3, 1, 1)


# ------------------------------------------------------------------------------------------- real Caffe


def write_features(folder: Path, rows: int, test_rows: int, inputs: int, classes: int) -> None:
    """Nonnegative rows like post-ReLU fc7 features: each row mixes the patterns of its 1-3 tags, plus noise."""
    rng = np.random.default_rng(4)
    patterns = np.maximum(rng.standard_normal((classes, inputs)), 0).astype(np.float32)
    for split, count in (("train", rows), ("test", test_rows)):
        y = np.zeros((count, classes), np.float32)
        for row in y:
            row[rng.choice(classes, rng.integers(1, 4), replace=False)] = 1
        x = (y @ patterns) / y.sum(1, keepdims=True) + np.abs(rng.standard_normal((count, inputs))).astype(np.float32)
        with h5py.File(folder / f"{split}_000.h5", "w") as handle:
            handle["data"], handle["label"] = 0.5 * x, y
        (folder / f"{split}.txt").write_text(f"{split}_000.h5\n")


def materialise(folder: Path, source: str, model: str, classes: int, **solver_changes: object) -> Path:
    """Copy a classifier's train_test, deploy and solver into ``folder`` as the train stage does (relative paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train_test.prototxt", "deploy.prototxt"):
        text = (PROTOTXT / source / name).read_text()
        (folder / name).write_text(re.sub(r"num_output: 1000\b", f"num_output: {classes}", text))
    text = (PROTOTXT / source / f"solver_{model}.prototxt").read_text()
    for key, value in solver_changes.items():
        text = re.sub(rf"^{key}: .*$", f"{key}: {value}", text, flags=re.M)
    (folder / "solver.prototxt").write_text(text)
    (folder / "snapshots").mkdir(exist_ok=True)
    return folder / "solver.prototxt"


@pytest.mark.caffe
def test_real_classifier_trains_two_iterations(caffe_engine, tmp_path):
    write_features(tmp_path, rows=200, test_rows=100, inputs=8192, classes=1000)
    solver_path = materialise(tmp_path, "classifier", "object", 1000, max_iter=2, test_iter=1, display=1)
    result = caffe_engine.train(solver_path, log=tmp_path / "train.log")
    log = caffelog.parse_log(result.log)
    assert result.weights.name == "object_iter_2.caffemodel" and log.done
    assert log.test_values("loss")[0] == pytest.approx(math.log(2), rel=0.1), "a fresh net outputs about 0.5 for every entry"
    assert [row.lr for row in log.train] == [pytest.approx(0.1)] * 2
    with caffe_engine.load_net(tmp_path / "deploy.prototxt", result.weights) as runner:
        rows = h5py.File(tmp_path / "test_000.h5")["data"][:3]
        prob = runner.forward({"data": rows}, ["prob"])["prob"]
    assert prob.shape == (3, 1000) and 0 < prob.min() and prob.max() < 1


@pytest.mark.caffe
@pytest.mark.parametrize("model", MODELS)
def test_demo_classifier_learns(caffe_engine, tmp_path, model):
    write_features(tmp_path, rows=700, test_rows=100, inputs=256, classes=20)
    result = caffe_engine.train(materialise(tmp_path, "demo/classifier", model, 20), log=tmp_path / "train.log")
    test_loss = caffelog.parse_log(result.log).test_values("loss")
    assert test_loss[1200] < 0.75 * test_loss[0]
    with h5py.File(tmp_path / "test_000.h5") as handle:
        x, y = handle["data"][:], handle["label"][:]
    with caffe_engine.load_net(tmp_path / "deploy.prototxt", result.weights) as runner:
        prob = runner.forward({"data": x}, ["prob"])["prob"]
    precision_at_1 = y[np.arange(len(y)), prob.argmax(1)].mean()
    assert precision_at_1 > 2 * y.mean(0).max(), "better than always naming the most frequent tag"


@pytest.mark.caffe
def test_places_deploy_runs_with_zero_weights(caffe_engine):
    with caffe_engine.load_net(PROTOTXT / "vgg16_scene/deploy.prototxt", None) as runner:
        out = runner.forward({"data": np.ones((1, 3, 224, 224), np.float32)}, ["fc7", "prob"])
    assert out["fc7"].shape == (1, 4096) and not out["fc7"].any()
    np.testing.assert_allclose(out["prob"], 1 / 205, rtol=1e-5)
