"""The project's Caffe schema and file I/O, without Caffe: prototxt, caffemodel, solverstate, upgrade, blobs."""
from __future__ import annotations

import ast
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from harrison.errors import HarrisonError
from harrison.proto import caffe_pb2, io

REPO = Path(__file__).resolve().parent.parent
PROTOTXTS = sorted((REPO / "prototxt").glob("**/*.prototxt"))


def _serialized_descriptor(module_path: Path) -> bytes:
    """The FileDescriptorProto bytes that a generated *_pb2.py module registers."""
    for node in ast.walk(ast.parse(module_path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return node.args[0].value
    raise AssertionError(f"{module_path} registers no serialized file")


def test_committed_module_is_generated_from_the_schema(tmp_path):
    subprocess.run([str(REPO / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True)
    fresh = tmp_path / "harrison" / "proto" / "caffe_pb2.py"
    committed = REPO / "harrison" / "proto" / "caffe_pb2.py"
    assert _serialized_descriptor(fresh) == _serialized_descriptor(committed), "run scripts/gen_proto.sh and commit caffe_pb2.py"


def test_schema_has_caffe_field_numbers():
    layer = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert {name: layer[name].number for name in ("transform_param", "loss_param", "inner_product_param",
                                                   "input_param", "recurrent_param", "python_param")} == {
        "transform_param": 100, "loss_param": 101, "inner_product_param": 117,
        "input_param": 143, "recurrent_param": 146, "python_param": 130}
    net = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name
    assert (net["layer"].number, net["layers"].number, net["input_dim"].number) == (100, 2, 4)
    v1 = caffe_pb2.V1LayerParameter
    assert (v1.INNER_PRODUCT, v1.CONVOLUTION, v1.SOFTMAX_LOSS, v1.DESCRIPTOR.fields_by_name["blobs_lr"].number) == (14, 4, 21, 7)
    solver = caffe_pb2.SolverParameter()
    assert (solver.average_loss, solver.iter_size, solver.clip_gradients, solver.test_initialization,
            solver.random_seed, solver.type, solver.snapshot_format) == (1, 1, -1, True, -1, "SGD", solver.BINARYPROTO)
    assert caffe_pb2.LossParameter().normalization == caffe_pb2.LossParameter.VALID
    assert caffe_pb2.ParamSpec().lr_mult == 1 and caffe_pb2.FillerParameter().type == "constant"


@pytest.mark.parametrize("path", PROTOTXTS, ids=[str(p.relative_to(REPO)) for p in PROTOTXTS])
def test_project_prototxt_parses(path):
    if path.name.startswith("solver"):
        solver = io.upgrade_solver(io.read_solver(path))
        assert solver.base_lr > 0 and (solver.net or solver.train_net or solver.HasField("net_param"))
        return
    net = io.upgrade_net(io.read_net(path))
    assert len(net.layer) > 0 and not len(net.layers)
    assert all(layer.type for layer in net.layer)
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        names = [layer.name for layer in net.layer if _in_phase(layer, phase)]
        assert names and len(set(names)) == len(names), f"layer names repeat in phase {phase}"


def _in_phase(layer: caffe_pb2.LayerParameter, phase: int) -> bool:
    """Whether the layer's include/exclude phase rules keep it in ``phase`` (levels and stages aside)."""
    if len(layer.include):
        return any(not rule.HasField("phase") or rule.phase == phase for rule in layer.include)
    return not any(rule.HasField("phase") and rule.phase == phase for rule in layer.exclude)


def _small_net() -> caffe_pb2.NetParameter:
    rng = np.random.default_rng(0)
    net = caffe_pb2.NetParameter(name="small")
    conv = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
    conv.convolution_param.num_output = 4
    conv.blobs.extend([io.array_to_blob(rng.standard_normal((4, 3, 3, 3))), io.array_to_blob(rng.standard_normal(4))])
    net.layer.add(name="relu1", type="ReLU", bottom=["conv1"], top=["conv1"])
    fc = net.layer.add(name="fc", type="InnerProduct", bottom=["conv1"], top=["fc"])
    fc.blobs.extend([io.array_to_blob(rng.standard_normal((5, 36))), io.array_to_blob(np.zeros(5))])
    return net


def test_caffemodel_round_trip(tmp_path):
    net = _small_net()
    path = io.write_caffemodel(tmp_path / "m.caffemodel", net)
    back = io.read_caffemodel(path)
    assert back == net
    blobs = io.layer_blobs(back)
    assert sorted(blobs) == ["conv1", "fc"]
    assert [b.shape for b in blobs["conv1"]] == [(4, 3, 3, 3), (4,)]
    assert blobs["fc"][0].dtype == np.float32
    expected = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(blobs["conv1"][0], expected)
    assert [p.name for p in tmp_path.iterdir()] == ["m.caffemodel"]


def test_solverstate_round_trip(tmp_path):
    state = caffe_pb2.SolverState(iter=200, learned_net="snap_iter_200.caffemodel", current_step=1)
    state.history.extend([io.array_to_blob(np.full((5, 36), 0.5)), io.array_to_blob(np.arange(5.0))])
    back = io.read_solverstate(io.write_solverstate(tmp_path / "s.solverstate", state))
    assert back == state and back.iter == 200
    np.testing.assert_array_equal(io.blob_to_array(back.history[1]), np.arange(5, dtype=np.float32))


def test_write_prototxt_round_trip(tmp_path):
    solver = caffe_pb2.SolverParameter(net="train_test.prototxt", base_lr=0.001, lr_policy="step", gamma=0.1,
                                       stepsize=100, momentum=0.9, weight_decay=0.0005, snapshot_prefix="snap")
    solver.test_iter.append(10)
    path = io.write_prototxt(tmp_path / "solver.prototxt", solver)
    assert 'lr_policy: "step"' in path.read_text()
    assert io.read_solver(path) == solver
    net = _small_net()
    assert io.read_net(io.write_prototxt(tmp_path / "net.prototxt", net)) == net


V1_NET = """\
name: "legacy"
input: "data"
input_dim: 2
input_dim: 3
input_dim: 8
input_dim: 8
layers {
  bottom: "data"
  top: "conv1"
  name: "conv1"
  type: CONVOLUTION
  blobs_lr: 1
  blobs_lr: 2
  weight_decay: 1
  weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 }
}
layers { bottom: "conv1" top: "conv1" name: "relu1" type: RELU }
layers {
  bottom: "conv1" top: "pool1" name: "pool1" type: POOLING
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  bottom: "pool1" top: "fc6" name: "fc6" type: INNER_PRODUCT
  blobs_lr: 1 blobs_lr: 2
  inner_product_param { num_output: 6 }
}
layers { bottom: "fc6" top: "fc6" name: "drop6" type: DROPOUT dropout_param { dropout_ratio: 0.5 } }
layers { bottom: "fc6" top: "prob" name: "prob" type: SOFTMAX }
"""


def test_v1_net_upgrade(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text(V1_NET)
    raw = io.read_net(path)
    assert len(raw.layers) == 6 and list(raw.input_dim) == [2, 3, 8, 8]
    net = io.upgrade_net(raw)
    assert [(l.name, l.type) for l in net.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"),
        ("fc6", "InnerProduct"), ("drop6", "Dropout"), ("prob", "Softmax")]
    assert not len(net.layers) and not len(net.input) and not len(net.input_dim)
    assert list(net.layer[0].top) == ["data"] and list(net.layer[0].input_param.shape[0].dim) == [2, 3, 8, 8]
    conv = net.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert [p.HasField("decay_mult") for p in net.layer[4].param] == [False, False]
    assert conv.convolution_param.num_output == 4 and list(conv.convolution_param.pad) == [1]
    assert net.layer[3].pooling_param.stride == 2 and net.layer[5].dropout_param.dropout_ratio == 0.5
    assert list(net.layer[2].bottom) == list(net.layer[2].top) == ["conv1"]
    assert io.upgrade_net(net) == net
    assert raw.layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION, "upgrade_net must not change its input"


def test_v1_data_layer_moves_transform_settings():
    net = caffe_pb2.NetParameter()
    data = net.layers.add(name="data", type=caffe_pb2.V1LayerParameter.DATA, top=["data", "label"])
    data.data_param.source = "train_lmdb"
    data.data_param.backend = caffe_pb2.DataParameter.LMDB
    data.data_param.scale = 0.5
    data.data_param.mirror = True
    data.data_param.mean_file = "mean.binaryproto"
    data.include.add(phase=caffe_pb2.TRAIN)
    layer = io.upgrade_net(net).layer[0]
    assert layer.type == "Data" and layer.include[0].phase == caffe_pb2.TRAIN
    assert (layer.transform_param.scale, layer.transform_param.mirror, layer.transform_param.mean_file) == (0.5, True, "mean.binaryproto")
    assert not layer.data_param.HasField("scale") and layer.data_param.source == "train_lmdb"


def test_input_shape_upgrade_and_batchnorm_params():
    net = caffe_pb2.NetParameter()
    net.input.extend(["a", "b"])
    net.input_shape.add(dim=[1, 3])
    net.input_shape.add(dim=[1, 5])
    bn = net.layer.add(name="bn", type="BatchNorm", bottom=["a"], top=["a"])
    bn.param.extend([caffe_pb2.ParamSpec(lr_mult=0)] * 3)
    up = io.upgrade_net(net)
    assert [l.name for l in up.layer] == ["input", "bn"] and list(up.layer[0].top) == ["a", "b"]
    assert [list(s.dim) for s in up.layer[0].input_param.shape] == [[1, 3], [1, 5]]
    assert not len(up.layer[1].param)
    only_names = caffe_pb2.NetParameter(input=["data"])
    assert not len(io.upgrade_net(only_names).input) and not len(io.upgrade_net(only_names).layer)


def test_v0_net_is_refused():
    net = caffe_pb2.NetParameter(name="ancient")
    net.layers.add().layer.name = "conv1"
    with pytest.raises(HarrisonError, match="V0 format.*upgrade_net_proto"):
        io.upgrade_net(net)


def test_upgrade_solver_type():
    solver = caffe_pb2.SolverParameter(solver_type=caffe_pb2.SolverParameter.NESTEROV)
    up = io.upgrade_solver(solver)
    assert up.type == "Nesterov" and not up.HasField("solver_type")
    assert io.upgrade_solver(caffe_pb2.SolverParameter(type="Adam")).type == "Adam"


def test_legacy_blob_shapes():
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=3, width=4, data=np.arange(12.0))
    array = io.blob_to_array(blob)
    assert array.shape == (1, 1, 3, 4) and array.dtype == np.float32
    np.testing.assert_array_equal(array.reshape(3, 4), np.arange(12.0).reshape(3, 4))
    mean = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2, data=np.ones(12))
    assert io.blob_to_array(mean).shape == (1, 3, 2, 2)
    double = caffe_pb2.BlobProto(double_data=[0.1, 0.2])
    double.shape.dim.append(2)
    assert io.blob_to_array(double).dtype == np.float64 and io.blob_to_array(double)[0] == 0.1
    scalar = caffe_pb2.BlobProto(data=[7.0])
    assert io.blob_to_array(scalar).shape == () and float(io.blob_to_array(scalar)) == 7.0
    empty = io.array_to_blob(np.zeros((0, 3)))
    assert io.blob_to_array(empty).shape == (0, 3)
    with pytest.raises(HarrisonError, match="holds 3 values instead of 4"):
        io.blob_to_array(caffe_pb2.BlobProto(num=1, channels=1, height=2, width=2, data=[1, 2, 3]))


def test_array_to_blob_matches_field_by_field_filling():
    array = np.random.default_rng(1).standard_normal((3, 2, 5))
    fast = io.array_to_blob(array)
    slow = caffe_pb2.BlobProto(data=array.astype(np.float32).ravel().tolist())
    slow.shape.dim.extend([3, 2, 5])
    assert fast == slow
    assert fast.SerializeToString(deterministic=True) == slow.SerializeToString(deterministic=True)


def test_binaryproto_mean(tmp_path):
    mean = np.random.default_rng(2).uniform(0, 255, (3, 4, 5)).astype(np.float32)
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=4, width=5, data=mean.ravel())
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    np.testing.assert_array_equal(io.read_binaryproto_mean(path), mean)
    path.write_bytes(io.array_to_blob(np.ones((2, 3, 4, 5))).SerializeToString())
    with pytest.raises(HarrisonError, match="1 x C x H x W"):
        io.read_binaryproto_mean(path)


def test_caffemodel_over_64_mb(tmp_path):
    weights = np.random.default_rng(3).standard_normal((4096, 4352), dtype=np.float32)  # 71 MB
    net = caffe_pb2.NetParameter(name="big")
    layer = net.layer.add(name="fc6", type="InnerProduct")
    layer.blobs.append(io.array_to_blob(weights))
    path = io.write_caffemodel(tmp_path / "big.caffemodel", net)
    assert path.stat().st_size > 64 * 1024 * 1024
    np.testing.assert_array_equal(io.layer_blobs(io.read_caffemodel(path))["fc6"][0], weights)


def test_malformed_prototxt_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text(textwrap.dedent("""\
        name: "bad"
        layer {
          name: "fc"
          type: "InnerProduct"
          inner_product_param { num_outputs: 3 }
        }
        """))
    with pytest.raises(HarrisonError) as info:
        io.read_net(path)
    message = str(info.value)
    assert message.startswith(f"{path}:5:")
    assert 'no field named "num_outputs"' in message and "fix that line" in message
    path.write_text("layer {\n  name: \"x\"\n")
    with pytest.raises(HarrisonError, match=rf'{path}:2:9: malformed net prototxt: Expected "}}";'):
        io.read_net(path)


def test_missing_and_damaged_files(tmp_path):
    with pytest.raises(HarrisonError, match="not found"):
        io.read_net(tmp_path / "none.prototxt")
    with pytest.raises(HarrisonError, match="not found"):
        io.read_caffemodel(tmp_path / "none.caffemodel")
    damaged = tmp_path / "d.caffemodel"
    damaged.write_bytes(io.array_to_blob(np.ones(100)).SerializeToString()[:-7])
    with pytest.raises(HarrisonError, match=rf"{damaged}: not a valid binary .caffemodel"):
        io.read_caffemodel(damaged)
