"""Forward parity of the torch engine with real BVLC Caffe: the same prototxt, the same .caffemodel
(filled by Caffe's msra fillers and saved by Caffe), the same input.

Blobs are compared normwise, max |torch - caffe| / max |caffe| per blob (caffe-facts.md, "Measured
parity"): element-wise relative errors of entries near zero say nothing about the net.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harrison.engines import engine_class
from harrison.proto.io import read_net, upgrade_net, write_prototxt

pytestmark = pytest.mark.caffe

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4

ZOO = """name: "zoo"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 13 dim: 11 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 10 } } }
layer { name: "conv_a" type: "Convolution" bottom: "data" top: "conv_a"
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2 } }
layer { name: "conv_b" type: "Convolution" bottom: "data" top: "conv_b"
  convolution_param { num_output: 4 kernel_h: 3 kernel_w: 2 dilation: 2 pad_h: 2 pad_w: 1 } }
layer { name: "relu_b" type: "ReLU" bottom: "conv_b" top: "conv_b" relu_param { negative_slope: 0.1 } }
layer { name: "pool_max" type: "Pooling" bottom: "conv_b" top: "pool_max" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool_ave" type: "Pooling" bottom: "conv_b" top: "pool_ave" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool_wide" type: "Pooling" bottom: "conv_b" top: "pool_wide" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 } }
layer { name: "pool_drop" type: "Pooling" bottom: "conv_b" top: "pool_drop" pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "pool_global" type: "Pooling" bottom: "conv_a" top: "pool_global" pooling_param { pool: AVE global_pooling: true } }
layer { name: "concat" type: "Concat" bottom: "conv_a" bottom: "pool_max" bottom: "pool_ave" top: "concat" }
layer { name: "reshape" type: "Reshape" bottom: "concat" top: "reshape" reshape_param { shape { dim: 0 dim: -1 dim: 6 } } }
layer { name: "ip_axis" type: "InnerProduct" bottom: "reshape" top: "ip_axis" inner_product_param { num_output: 5 axis: 2 } }
layer { name: "flatten" type: "Flatten" bottom: "pool_wide" top: "flatten" }
layer { name: "flat_drop" type: "Flatten" bottom: "pool_drop" top: "flat_drop" flatten_param { axis: 2 } }
layer { name: "flat_drop2" type: "Reshape" bottom: "flat_drop" top: "flat_drop2" reshape_param { shape { dim: -1 } axis: 1 } }
layer { name: "concat2" type: "Concat" bottom: "flatten" bottom: "flat_drop2" top: "concat2" concat_param { axis: 1 } }
layer { name: "ip_t" type: "InnerProduct" bottom: "pool_drop" top: "ip_t" inner_product_param { num_output: 10 transpose: true } }
layer { name: "drop" type: "Dropout" bottom: "ip_t" top: "ip_t" }
layer { name: "prob" type: "Softmax" bottom: "ip_t" top: "prob" }
layer { name: "sig" type: "Sigmoid" bottom: "ip_t" top: "sig" }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "ip_t" bottom: "label" top: "loss" }
layer { name: "split" type: "Split" bottom: "pool_global" top: "g1" top: "g2" }
layer { name: "silence" type: "Silence" bottom: "g1" bottom: "concat2" }
"""


def with_fillers(source: Path, out: Path) -> Path:
    """The net at ``source`` with msra weight and uniform bias fillers on every convolution and inner product."""
    net = upgrade_net(read_net(source))
    for layer in net.layer:
        param = {"Convolution": layer.convolution_param, "InnerProduct": layer.inner_product_param}.get(layer.type)
        if param is not None:
            param.weight_filler.type = "msra"
            param.bias_filler.type = "uniform"
            param.bias_filler.min, param.bias_filler.max = -0.1, 0.1
    return write_prototxt(out, net)


def normwise(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def compare(caffe_engine, net: Path, weights: Path, inputs: dict[str, np.ndarray], blobs: list[str]) -> dict[str, float]:
    with caffe_engine.load_net(net, weights) as runner:
        ref = runner.forward(inputs, blobs)
    with engine_class("torch").create(None).load_net(net, weights) as runner:
        got = runner.forward(inputs, blobs)
    return {name: normwise(got[name], ref[name]) for name in blobs}


def image_batch(batch: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Mean-subtracted BGR-like values."""
    return np.random.default_rng(seed).uniform(-120, 135, (batch, 3, *size)).astype(np.float32)


@pytest.mark.parametrize("folder", ["vgg_object", "vgg_scene"])
def test_demo_vgg_nets_match_caffe(caffe_engine, tmp_path, folder):
    net = with_fillers(REPO / "prototxt" / "demo" / folder / "deploy.prototxt", tmp_path / "net.prototxt")
    weights = caffe_engine.init_weights(net, tmp_path / "caffe.caffemodel", seed=11)
    size = tuple(upgrade_net(read_net(net)).layer[0].input_param.shape[0].dim[2:])
    errors = compare(caffe_engine, net, weights, {"data": image_batch(3, size)}, ["pool5", "fc6", "fc7", "prob"])
    assert max(errors.values()) < TOLERANCE, errors


def test_full_vgg16_fc7_matches_caffe(caffe_engine, tmp_path):
    net = with_fillers(REPO / "prototxt" / "vgg16_object" / "deploy.prototxt", tmp_path / "net.prototxt")
    weights = caffe_engine.init_weights(net, tmp_path / "caffe.caffemodel", seed=5)
    errors = compare(caffe_engine, net, weights, {"data": image_batch(2, (224, 224))}, ["fc7"])
    assert errors["fc7"] < TOLERANCE, errors


def test_layer_zoo_matches_caffe_both_ways(caffe_engine, tmp_path):
    """Odd pooling geometries (ceil, padding, the dropped window), grouped and dilated convolution,
    InnerProduct with axis and transpose, reshape, concat, the loss: every blob, with Caffe's weights
    and with weights the torch engine wrote."""
    (tmp_path / "zoo.prototxt").write_text(ZOO)
    net = with_fillers(tmp_path / "zoo.prototxt", tmp_path / "net.prototxt")
    rng = np.random.default_rng(3)
    inputs = {"data": rng.standard_normal((2, 4, 13, 11)).astype(np.float32),
              "label": (rng.random((2, 10)) < 0.3).astype(np.float32)}
    blobs = ["conv_a", "conv_b", "pool_max", "pool_ave", "pool_wide", "pool_drop", "pool_global", "concat",
             "reshape", "ip_axis", "flatten", "flat_drop", "flat_drop2", "concat2", "ip_t", "prob", "sig", "loss", "g2"]
    caffe_weights = caffe_engine.init_weights(net, tmp_path / "caffe.caffemodel", seed=2)
    torch_weights = engine_class("torch").create(None).init_weights(net, tmp_path / "torch.caffemodel", seed=2)
    for weights in (caffe_weights, torch_weights):
        errors = compare(caffe_engine, net, weights, inputs, blobs)
        assert max(errors.values()) < 1e-5, (weights.name, errors)


def test_data_layers_match_caffe(caffe_engine, tmp_path):
    """HDF5Data across files and wrapping, and an LMDB Data layer with mean_file, scale and a centred crop:
    the same batches in the same order, pass after pass."""
    import h5py
    import lmdb

    from harrison.proto import caffe_pb2
    from harrison.proto.io import array_to_blob

    rng = np.random.default_rng(4)
    names = []
    for index, rows in enumerate((5, 7)):
        with h5py.File(tmp_path / f"part{index}.h5", "w") as handle:
            handle["data"] = rng.standard_normal((rows, 3, 2)).astype(np.float32)
            handle["label"] = rng.integers(0, 9, rows).astype(np.int32)
        names.append(f"part{index}.h5")
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    images = rng.integers(0, 256, (3, 3, 7, 6)).astype(np.uint8)
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for index, image in enumerate(images):
            datum = caffe_pb2.Datum(channels=3, height=7, width=6, data=image.tobytes(), label=index + 1)
            txn.put(f"{index:08d}_img.jpg".encode(), datum.SerializeToString())
    env.close()
    (tmp_path / "mean.binaryproto").write_bytes(array_to_blob(rng.uniform(0, 255, (1, 3, 7, 6)).astype(np.float32)).SerializeToString())
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "h5" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "list.txt" batch_size: 4 } }\n'
        'layer { name: "db" type: "Data" top: "image" top: "image_label" '
        'transform_param { scale: 0.5 crop_size: 4 mean_file: "mean.binaryproto" } data_param { source: "db" batch_size: 2 backend: LMDB } }\n')
    blobs = ["data", "label", "image", "image_label"]
    with caffe_engine.load_net(tmp_path / "net.prototxt", None) as runner:
        ref = [runner.forward({}, blobs) for _ in range(4)]
    with engine_class("torch").create(None).load_net(tmp_path / "net.prototxt", None) as runner:
        got = [runner.forward({}, blobs) for _ in range(4)]
    for mine, theirs in zip(got, ref):
        for name in blobs:
            np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-6, atol=1e-5, err_msg=name)
