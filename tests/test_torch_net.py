"""TorchNet (Caffe's Net semantics), its data layers and the TorchEngine, without real Caffe."""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from harrison.engines import engine_class
from harrison.engines.torch.net import TorchNet
from harrison.errors import HarrisonError
from harrison.proto import caffe_pb2
from harrison.proto.io import array_to_blob, read_caffemodel, write_caffemodel


def net(text: str, phase: str = "TEST", **kw) -> TorchNet:
    return TorchNet(text_format.Parse(text, caffe_pb2.NetParameter()), phase, "cpu", **kw)


INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }\n'
IP = ('layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" {extra} '
      'inner_product_param {{ num_output: {n} weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0.5 }} }} }}\n')


# ---- structure --------------------------------------------------------------------------------

def test_include_exclude_rules_select_layers():
    text = INPUT + "".join(
        f'layer {{ name: "{name}" type: "ReLU" bottom: "data" top: "{name}" {rule} }}\n'
        for name, rule in [
            ("always", ""),
            ("train", "include { phase: TRAIN }"),
            ("not_test", "exclude { phase: TEST }"),
            ("deploy", 'include { stage: "deploy" }'),
            ("not_deploy", 'include { not_stage: "deploy" }'),
            ("level2", "include { min_level: 2 }"),
            ("low", "include { max_level: 1 }"),
            ("either", 'include { phase: TRAIN } include { stage: "deploy" }'),
        ])
    names = lambda n: [layer.name for layer in n.layers][1:]  # noqa: E731
    assert names(net(text, "TEST")) == ["always", "not_deploy", "low"]
    assert names(net(text, "TRAIN")) == ["always", "train", "not_test", "not_deploy", "low", "either"]
    assert names(net(text, "TEST", stages=("deploy",), level=2)) == ["always", "deploy", "level2", "either"]


def test_in_place_layers_outputs_and_loss_weights():
    text = INPUT + IP.format(name="fc", bottom="data", top="fc", n=3, extra="") + """
        layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }
        layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "fc" bottom: "label" top: "loss" }
        layer { name: "sig" type: "Sigmoid" bottom: "fc" top: "prob" loss_weight: 0.5 }
    """
    n = net(text)
    assert n.input_names == ["data", "label"]
    assert n.output_names == ["loss", "prob"]
    assert n.loss_weights == [("loss", 1.0), ("prob", 0.5)]
    x = torch.randn(2, 6)
    blobs = n.forward({"data": x, "label": torch.ones(2, 3)})
    weight, bias = n.params[1]
    expected = torch.relu(x @ weight.T + bias)
    torch.testing.assert_close(blobs["fc"], expected)  # the final value of an in-place blob
    assert float(n.loss(blobs)) == pytest.approx(float(blobs["loss"] + 0.5 * blobs["prob"].sum()), rel=1e-6)
    assert not blobs["fc"].requires_grad  # TEST nets run without autograd


def test_learnable_order_multipliers_and_sharing():
    text = INPUT + IP.format(name="a", bottom="data", top="a", n=6, extra='param { name: "w" lr_mult: 2 } param { lr_mult: 3 decay_mult: 0 }') \
        + IP.format(name="b", bottom="a", top="b", n=6, extra='param { name: "w" }') \
        + IP.format(name="c", bottom="b", top="c", n=4, extra="")
    n = net(text, "TRAIN", seed=1)
    assert [(p.layer, p.index, p.lr_mult, p.decay_mult) for p in n.learnable] == [
        ("a", 0, 2.0, 1.0), ("a", 1, 3.0, 0.0), ("b", 1, 1.0, 1.0), ("c", 0, 1.0, 1.0), ("c", 1, 1.0, 1.0)]
    assert n.params[2][0] is n.params[1][0]
    assert all(p.param.requires_grad and p.param.is_leaf for p in n.learnable)
    assert torch.all(n.params[3][1] == 0.5)
    assert abs(n.params[3][0]).max() <= math.sqrt(3 / 6)


def test_in_place_rules_follow_caffes_splits():
    chain = INPUT + ('layer { name: "r1" type: "ReLU" bottom: "data" top: "data" }\n'
                     'layer { name: "r2" type: "Sigmoid" bottom: "data" top: "data" }\n'
                     'layer { name: "s" type: "Softmax" bottom: "data" top: "s" }\n')
    x = torch.randn(2, 6)
    blobs = net(chain).forward({"data": x})
    torch.testing.assert_close(blobs["data"], torch.sigmoid(torch.relu(x)))
    torch.testing.assert_close(blobs["s"], torch.softmax(torch.sigmoid(torch.relu(x)), 1))
    read_then_modified = INPUT + ('layer { name: "s" type: "Softmax" bottom: "data" top: "s" }\n'
                                  'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n')
    with pytest.raises(HarrisonError, match="'r' \\(ReLU\\): top blob 'data' is produced by multiple sources"):
        net(read_then_modified)
    with pytest.raises(HarrisonError, match="'again'.*multiple sources"):
        net(INPUT + 'layer { name: "again" type: "Sigmoid" bottom: "data" top: "s" }\n'
                    'layer { name: "again" type: "ReLU" bottom: "data" top: "s" }\n')


def test_errors_name_the_layer():
    with pytest.raises(HarrisonError, match="'lrn1'.*'LRN'"):
        net(INPUT + 'layer { name: "lrn1" type: "LRN" bottom: "data" top: "lrn1" }')
    with pytest.raises(HarrisonError, match="'r'.*bottom 'nothing'"):
        net(INPUT + 'layer { name: "r" type: "ReLU" bottom: "nothing" top: "r" }')
    n = net(INPUT + IP.format(name="fc", bottom="data", top="fc", n=3, extra=""))
    with pytest.raises(HarrisonError, match="'fc' \\(InnerProduct\\)"):
        n.forward({"data": torch.zeros(2, 5)})


# ---- weights ----------------------------------------------------------------------------------

TWO_LAYERS = INPUT + IP.format(name="fc1", bottom="data", top="fc1", n=4, extra="") + IP.format(name="fc2", bottom="fc1", top="fc2", n=3, extra="")


def test_caffemodel_round_trip_and_seeds(tmp_path):
    first = net(TWO_LAYERS, seed=3)
    path = first.save_caffemodel(tmp_path / "w.caffemodel")
    saved = read_caffemodel(path)
    assert [(layer.name, layer.type, [tuple(b.shape.dim) for b in layer.blobs]) for layer in saved.layer] == [
        ("data", "Input", []), ("fc1", "InnerProduct", [(4, 6), (4,)]), ("fc2", "InnerProduct", [(3, 4), (3,)])]
    other = net(TWO_LAYERS, seed=4)
    assert not torch.equal(other.params[1][0], first.params[1][0])
    other.load_caffemodel(path)
    for mine, theirs in zip(first.learnable, other.learnable):
        assert torch.equal(mine.param, theirs.param)
    assert torch.equal(net(TWO_LAYERS, seed=3).params[1][0], first.params[1][0])


def test_copy_rules_legacy_shapes_and_mismatches():
    target = net(TWO_LAYERS)
    weight = np.arange(24, dtype=np.float32).reshape(4, 6)
    source = caffe_pb2.NetParameter()
    legacy = source.layer.add(name="fc1", type="InnerProduct")
    blob = legacy.blobs.add(num=1, channels=1, height=4, width=6)
    blob.data.extend(weight.ravel())
    legacy.blobs.append(array_to_blob(np.ones(4, np.float32)))
    source.layer.add(name="not_in_net", type="ReLU").blobs.append(array_to_blob(np.ones(2, np.float32)))
    target.copy_from(source)
    np.testing.assert_array_equal(target.params[1][0].detach().numpy(), weight)
    wrong = caffe_pb2.NetParameter()
    layer = wrong.layer.add(name="fc2")
    layer.blobs.extend([array_to_blob(np.ones((3, 5), np.float32)), array_to_blob(np.ones(3, np.float32))])
    with pytest.raises(HarrisonError, match=r"'fc2'.*\(3, 5\).*\(3, 4\)"):
        target.copy_from(wrong)
    del layer.blobs[1:]
    with pytest.raises(HarrisonError, match="'fc2'.*1 blob"):
        target.copy_from(wrong)


def test_v1_net_and_weights(tmp_path):
    v1 = """name: "old" input: "data" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 3
        layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
                 convolution_param { num_output: 2 kernel_size: 3 } }
        layers { name: "relu" type: RELU bottom: "conv" top: "conv" }"""
    param = text_format.Parse(v1, caffe_pb2.NetParameter())
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((2, 2, 3, 3)).astype(np.float32), np.array([0.5, -0.5], np.float32)
    param.layers[0].blobs.extend([array_to_blob(w), array_to_blob(b)])
    write_caffemodel(tmp_path / "old.caffemodel", param)
    n = TorchNet(param, "TEST", "cpu")  # a net carrying blobs starts from them
    assert [(p.lr_mult, p.decay_mult) for p in n.learnable] == [(1.0, 1.0), (2.0, 0.0)]
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    expected = np.maximum((x[0] * w).sum(axis=(1, 2, 3)) + b, 0)
    np.testing.assert_allclose(n.forward({"data": torch.from_numpy(x)})["conv"].numpy().ravel(), expected, rtol=1e-5)
    fresh = TorchNet(text_format.Parse(v1, caffe_pb2.NetParameter()), "TEST", "cpu")
    fresh.load_caffemodel(tmp_path / "old.caffemodel")
    assert torch.equal(fresh.params[1][0], torch.from_numpy(w))


def test_test_net_shares_the_train_nets_tensors():
    train, test = net(TWO_LAYERS, "TRAIN", seed=1), net(TWO_LAYERS, "TEST", seed=2)
    test.share_weights(train)
    with torch.no_grad():
        train.params[2][1].add_(1.0)
    x = torch.randn(2, 6)
    torch.testing.assert_close(test.forward({"data": x})["fc2"], train.forward({"data": x})["fc2"])


def test_dropout_masks_follow_seed_iteration_and_pass():
    text = INPUT + 'layer { name: "drop" type: "Dropout" bottom: "data" top: "out" }'
    x = {"data": torch.ones(2, 6) * torch.arange(1.0, 7.0)}
    masks = []
    for seed, iteration in [(0, 5), (0, 5), (0, 6), (1, 5)]:
        n = net(text.replace("dim: 2 dim: 6", "dim: 50 dim: 100"), "TRAIN", seed=seed)
        n.set_iteration(iteration)
        masks.append(n.forward({"data": torch.ones(50, 100)})["out"])
        masks.append(n.forward({"data": torch.ones(50, 100)})["out"])  # second pass within the iteration
    assert torch.equal(masks[0], masks[2]) and torch.equal(masks[1], masks[3])
    assert not torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[4]) and not torch.equal(masks[0], masks[6])
    assert torch.equal(net(text).forward(x)["out"], x["data"])


# ---- data layers ------------------------------------------------------------------------------

def hdf5_files(root: Path, sizes=(5, 7)) -> list[str]:
    names, start = [], 0
    for index, rows in enumerate(sizes):
        name = f"part{index}.h5"
        with h5py.File(root / name, "w") as handle:
            handle["data"] = np.arange(start, start + rows, dtype=np.int32).reshape(rows, 1).repeat(3, axis=1)
            handle["label"] = np.arange(start, start + rows, dtype=np.float64) * 10
        names.append(name)
        start += rows
    (root / "list.txt").write_text("\n".join(names) + "\n")
    return names


def hdf5_net(root: Path, batch: int = 4, shuffle: bool = False, seed: int = 0, phase: str = "TRAIN") -> TorchNet:
    text = (f'layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" '
            f'hdf5_data_param {{ source: "list.txt" batch_size: {batch} shuffle: {str(shuffle).lower()} }} }}')
    return net(text, phase, seed=seed, root=root)


def test_hdf5_batches_run_across_files_and_wrap(tmp_path):
    hdf5_files(tmp_path)
    n = hdf5_net(tmp_path)
    assert n.blob_shapes == {"data": (4, 3), "label": (4,)}
    rows = []
    for _ in range(4):
        blobs = n.forward()
        assert blobs["data"].dtype == torch.float32
        torch.testing.assert_close(blobs["label"], blobs["data"][:, 0] * 10)
        rows.append(blobs["data"][:, 0].tolist())
    assert rows == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [0, 1, 2, 3]]
    assert n.data_position()["data"]["row"] == 4


def test_hdf5_seek_equals_forward_passes_and_shuffle_is_seeded(tmp_path):
    hdf5_files(tmp_path)
    for shuffle in (False, True):
        walked = hdf5_net(tmp_path, batch=5, shuffle=shuffle, seed=9)
        batches = [walked.forward()["data"][:, 0].tolist() for _ in range(7)]
        sought = hdf5_net(tmp_path, batch=5, shuffle=shuffle, seed=9)
        sought.seek_data(6)
        assert sought.forward()["data"][:, 0].tolist() == batches[6]
        assert sought.data_position() == walked.data_position()
    epoch = [row for batch in batches for row in batch][:12]
    assert sorted(epoch) == list(range(12)) and epoch != list(range(12))
    other = hdf5_net(tmp_path, batch=5, shuffle=True, seed=10)
    assert [other.forward()["data"][:, 0].tolist() for _ in range(7)] != batches


def test_hdf5_errors_name_the_file(tmp_path):
    hdf5_files(tmp_path)
    text = 'layer { name: "data" type: "HDF5Data" top: "data" top: "weights" hdf5_data_param { source: "list.txt" batch_size: 2 } }'
    with pytest.raises(HarrisonError, match="part0.h5 has no dataset 'weights'"):
        net(text, root=tmp_path)
    with pytest.raises(HarrisonError, match="missing.txt"):
        net(text.replace("list.txt", "missing.txt"), root=tmp_path)


def write_lmdb(path: Path, images: np.ndarray, labels: list[int]) -> None:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for index, (image, label) in enumerate(zip(images, labels)):
            datum = caffe_pb2.Datum(channels=image.shape[0], height=image.shape[1], width=image.shape[2],
                                    data=image.astype(np.uint8).tobytes(), label=label)
            txn.put(f"{index:08d}_img{index}.jpg".encode(), datum.SerializeToString())
    env.close()


def data_net(root: Path, transform: str, phase: str = "TEST", backend: str = "LMDB", batch: int = 2) -> TorchNet:
    text = (f'layer {{ name: "data" type: "Data" top: "data" top: "label" transform_param {{ {transform} }} '
            f'data_param {{ source: "db" batch_size: {batch} backend: {backend} }} }}')
    return net(text, phase, root=root)


def test_lmdb_data_layer_transforms_like_caffe(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 6, 5))
    write_lmdb(tmp_path / "db", images, [7, 8, 9])
    n = data_net(tmp_path, "scale: 0.5 mean_value: 10 mean_value: 20 mean_value: 30 crop_size: 4")
    assert n.blob_shapes == {"data": (2, 3, 4, 4), "label": (2,)}
    mean = np.array([10, 20, 30], np.float32).reshape(3, 1, 1)
    expected = (images[:, :, 1:5, 0:4] - mean) * 0.5  # centred crop at TEST: offsets (6-4)//2 and (5-4)//2
    first, second = n.forward(), n.forward()
    np.testing.assert_allclose(first["data"].numpy(), expected[:2])
    np.testing.assert_allclose(second["data"].numpy(), expected[[2, 0]])  # wraps around
    assert first["label"].tolist() == [7, 8] and second["label"].tolist() == [9, 7]
    train = data_net(tmp_path, "crop_size: 4 mirror: true", phase="TRAIN", batch=3)
    for _ in range(4):
        for image, out in zip(images, train.forward()["data"].numpy()):
            windows = [image[:, t:t + 4, l:l + 4] for t in range(3) for l in range(2)]
            assert any(np.array_equal(out, w) or np.array_equal(out, w[:, :, ::-1]) for w in windows)
    with pytest.raises(HarrisonError, match="LEVELDB"):
        data_net(tmp_path, "", backend="LEVELDB")


# ---- engine -----------------------------------------------------------------------------------

def test_engine_load_net_any_batch_and_init_weights(tmp_path):
    engine_cls = engine_class("torch")
    assert engine_cls.available(None)[0]
    engine = engine_cls.create(None)
    facts = engine.describe()
    assert facts["engine"] == "torch" and facts["tf32"] == "off" and facts["device"].startswith("cpu")
    (tmp_path / "net.prototxt").write_text(TWO_LAYERS)
    first = engine.init_weights(tmp_path / "net.prototxt", tmp_path / "a.caffemodel", seed=5)
    engine.init_weights(tmp_path / "net.prototxt", tmp_path / "b.caffemodel", seed=5)
    assert first.read_bytes() == (tmp_path / "b.caffemodel").read_bytes()
    runner = engine.load_net(tmp_path / "net.prototxt", first)
    assert runner.input_shapes() == {"data": (2, 6)}
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    out = runner.forward({"data": x}, ["fc1", "fc2"])
    blobs = {layer.name: [np.array(b.data).reshape(b.shape.dim) for b in layer.blobs] for layer in read_caffemodel(first).layer}
    fc1 = x @ blobs["fc1"][0].T + blobs["fc1"][1]
    np.testing.assert_allclose(out["fc1"], fc1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["fc2"], fc1 @ blobs["fc2"][0].T + blobs["fc2"][1], rtol=1e-5, atol=1e-6)
    with pytest.raises(HarrisonError, match="no input blob 'fc1'"):
        runner.forward({"fc1": x}, ["fc2"])


def test_inference_fuses_convolution_and_in_place_relu_without_changing_values():
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }\n'
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" } bias_filler { type: "uniform" min: -1 max: 1 } } }\n'
            'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
            'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { kernel_size: 2 stride: 2 } }\n')
    test, train = net(text, "TEST", seed=4), net(text, "TRAIN", seed=4)
    x = {"data": torch.randn(2, 3, 9, 9)}
    fused = test.forward(x)
    plain = train.forward(x)
    if test._fusable:
        assert test._fusable == {1: 2}
    for name in ("conv", "pool"):
        assert torch.equal(fused[name], plain[name].detach())
    assert fused["conv"].min() >= 0
