"""Interchange with real BVLC Caffe: our schema against pycaffe's, .caffemodel files both ways, legacy
V1 nets and weights, and our upgrade against Caffe's upgrade tools."""
from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from harrison.proto import caffe_pb2, io
from test_proto import PROTOTXTS, REPO, V1_NET

pytestmark = pytest.mark.caffe

QUIET = {"GLOG_minloglevel": "2"}

# Runs inside Caffe's python3: loads a net (and weights), saves it when asked, dumps its params as .npy.
DUMP_PARAMS = """\
import sys, numpy as np, caffe
caffe.set_mode_cpu()
net_path, weights, out = sys.argv[1:4]
net = caffe.Net(net_path, caffe.TEST) if weights == "-" else caffe.Net(net_path, caffe.TEST, weights=weights)
if len(sys.argv) > 4:
    net.save(sys.argv[4])
for name, blobs in net.params.items():
    for index, blob in enumerate(blobs):
        np.save(f"{out}/{name}.{index}.npy", blob.data)
"""

DUMP_DESCRIPTOR = """\
import sys
from google.protobuf import descriptor_pb2
from caffe.proto import caffe_pb2
proto = descriptor_pb2.FileDescriptorProto()
caffe_pb2.DESCRIPTOR.CopyToProto(proto)
open(sys.argv[1], "wb").write(proto.SerializeToString())
"""

DEPLOY = """\
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "msra" } bias_filler { type: "gaussian" std: 0.5 } }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer {
  name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } bias_filler { type: "uniform" min: -1 max: 1 } }
}
"""


@pytest.fixture(scope="module")
def run_caffe(caffe_engine, tmp_path_factory):
    """Run ``args`` (``python3 SCRIPT ...`` or a Caffe tool) with the real Caffe, in a temp folder."""
    install = caffe_engine.install
    cwd = tmp_path_factory.mktemp("caffe")

    def run(args: list[str]) -> subprocess.CompletedProcess:
        command = install.command(args, cwd, env=QUIET)
        done = subprocess.run(command, cwd=cwd, env=install.environment(QUIET), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        return done

    return run


def _script(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def _dumped(folder: Path) -> dict[str, list[np.ndarray]]:
    blobs: dict[str, list[np.ndarray]] = {}
    for path in sorted(folder.glob("*.npy"), key=lambda p: (p.name.split(".")[0], int(p.name.split(".")[1]))):
        blobs.setdefault(path.name.split(".")[0], []).append(np.load(path))
    return blobs


def _fields(descriptor: descriptor_pb2.DescriptorProto, prefix: str = "") -> dict[str, tuple]:
    """Everything about a message that decides how files parse: fields, nested messages and enums."""
    facts: dict[str, tuple] = {}
    for field in descriptor.field:
        default = field.default_value
        if field.type == field.TYPE_FLOAT and default:
            default = float(np.float32(default))  # protoc versions print float defaults differently
        elif field.type == field.TYPE_DOUBLE and default:
            default = float(default)
        facts[f"{prefix}{descriptor.name}.{field.name}"] = (
            field.number, field.label, field.type, field.type_name, default, field.options.packed)
    for enum in descriptor.enum_type:
        facts[f"{prefix}{descriptor.name}.{enum.name}"] = tuple((v.name, v.number) for v in enum.value)
    for nested in descriptor.nested_type:
        facts.update(_fields(nested, f"{prefix}{descriptor.name}."))
    return facts


def _schema_facts(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, tuple]:
    facts = {enum.name: tuple((v.name, v.number) for v in enum.value) for enum in proto.enum_type}
    for message in proto.message_type:
        facts[message.name] = ()
        facts.update(_fields(message))
    return facts


def test_schema_equals_pycaffe_schema(run_caffe, tmp_path):
    out = tmp_path / "caffe_descriptor.pb"
    run_caffe(["python3", _script(tmp_path, "dump.py", DUMP_DESCRIPTOR), str(out)])
    theirs = descriptor_pb2.FileDescriptorProto.FromString(out.read_bytes())
    ours = descriptor_pb2.FileDescriptorProto()
    caffe_pb2.DESCRIPTOR.CopyToProto(ours)
    assert (ours.package, ours.syntax or "proto2") == (theirs.package, theirs.syntax or "proto2")
    their_facts, our_facts = _schema_facts(theirs), _schema_facts(ours)
    assert len(their_facts) > 500
    assert sorted(set(their_facts) ^ set(our_facts)) == []
    assert {k: v for k, v in our_facts.items() if their_facts[k] != v} == {}


def test_our_caffemodel_loads_in_caffe(run_caffe, tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    rng = np.random.default_rng(0)
    shapes = {"conv1": [(4, 3, 3, 3), (4,)], "fc": [(5, 64), (5,)]}
    net = caffe_pb2.NetParameter(name="tiny")
    for name, blob_shapes in shapes.items():
        net.layer.add(name=name).blobs.extend(io.array_to_blob(rng.standard_normal(s)) for s in blob_shapes)
    model = io.write_caffemodel(tmp_path / "ours.caffemodel", net)
    dump = tmp_path / "dump"
    dump.mkdir()
    run_caffe(["python3", _script(tmp_path, "params.py", DUMP_PARAMS), str(deploy), str(model), str(dump)])
    theirs = _dumped(dump)
    ours = io.layer_blobs(net)
    assert sorted(theirs) == sorted(ours)
    for name in ours:
        for mine, caffe_blob in zip(ours[name], theirs[name], strict=True):
            np.testing.assert_array_equal(caffe_blob, mine)


def test_caffe_saved_model_reads_back(run_caffe, tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    dump = tmp_path / "dump"
    dump.mkdir()
    saved = tmp_path / "caffe.caffemodel"
    run_caffe(["python3", _script(tmp_path, "params.py", DUMP_PARAMS), str(deploy), "-", str(dump), str(saved)])
    net = io.read_caffemodel(saved)
    assert [(l.name, l.type) for l in net.layer] == [("data", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("fc", "InnerProduct")]
    assert net.layer[1].convolution_param.weight_filler.type == "msra"
    ours = io.layer_blobs(net)
    theirs = _dumped(dump)
    assert sorted(ours) == sorted(theirs) == ["conv1", "fc"]
    for name in ours:
        assert [b.shape for b in ours[name]] == [b.shape for b in theirs[name]]
        for mine, caffe_blob in zip(ours[name], theirs[name], strict=True):
            np.testing.assert_array_equal(mine, caffe_blob)
    assert np.abs(ours["fc"][1]).max() <= 1 and np.abs(ours["fc"][1]).max() > 0


def _legacy_blob(array: np.ndarray) -> caffe_pb2.BlobProto:
    """A blob as pre-2015 Caffe wrote it: 4-D num/channels/height/width, 1s in front, no `shape`."""
    dims = (1,) * (4 - array.ndim) + array.shape
    return caffe_pb2.BlobProto(num=dims[0], channels=dims[1], height=dims[2], width=dims[3],
                               data=array.astype(np.float32).ravel())


def test_v1_net_and_weights_load_in_caffe_as_we_read_them(run_caffe, tmp_path):
    deploy = tmp_path / "v1_deploy.prototxt"
    deploy.write_text(V1_NET)
    rng = np.random.default_rng(4)
    weights = {"conv1": [rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)],
               "fc6": [rng.standard_normal((6, 64)), rng.standard_normal(6)]}
    legacy = caffe_pb2.NetParameter(name="legacy")
    for v1 in io.read_net(deploy).layers:
        layer = legacy.layers.add()
        layer.CopyFrom(v1)
        layer.blobs.extend(_legacy_blob(array) for array in weights.get(v1.name, []))
    model = io.write_caffemodel(tmp_path / "v1.caffemodel", legacy)
    dump = tmp_path / "dump"
    dump.mkdir()
    run_caffe(["python3", _script(tmp_path, "params.py", DUMP_PARAMS), str(deploy), str(model), str(dump)])
    theirs = _dumped(dump)
    ours = io.layer_blobs(io.read_caffemodel(model))
    assert ours["fc6"][0].shape == (1, 1, 6, 64) and ours["fc6"][1].shape == (1, 1, 1, 6)
    assert sorted(theirs) == sorted(ours) == ["conv1", "fc6"]
    for name, arrays in weights.items():
        for mine, caffe_blob, original in zip(ours[name], theirs[name], arrays, strict=True):
            np.testing.assert_array_equal(mine.reshape(caffe_blob.shape), caffe_blob)
            np.testing.assert_array_equal(caffe_blob.reshape(original.shape), original.astype(np.float32))


V1_TRAIN = textwrap.dedent("""\
    name: "legacy_train"
    layers {
      name: "data" type: DATA top: "data" top: "label"
      data_param { source: "train_lmdb" backend: LMDB batch_size: 8 scale: 0.00390625 mirror: true crop_size: 6 mean_file: "mean.binaryproto" }
      include { phase: TRAIN }
    }
    layers {
      name: "hdata" type: HDF5_DATA top: "data" top: "label"
      hdf5_data_param { source: "test.txt" batch_size: 4 }
      include { phase: TEST }
    }
    layers {
      name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
      param: "shared_w" blob_share_mode: PERMISSIVE blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
      convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.01 } }
    }
    layers { name: "fc" type: INNER_PRODUCT bottom: "conv1" top: "fc" blobs_lr: 0 inner_product_param { num_output: 3 } }
    layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc" bottom: "label" top: "loss" loss_weight: 2 loss_param { normalize: false } }
    layers { name: "acc" type: ACCURACY bottom: "fc" bottom: "label" top: "acc" exclude { phase: TRAIN } accuracy_param { top_k: 2 } }
    layers { name: "sig" type: SIGMOID_CROSS_ENTROPY_LOSS bottom: "fc" bottom: "label" top: "sig" }
    """)


@pytest.mark.parametrize("text", [V1_NET, V1_TRAIN], ids=["deploy", "train"])
def test_upgrade_matches_caffe_upgrade_tool(run_caffe, tmp_path, text):
    legacy = tmp_path / "legacy.prototxt"
    legacy.write_text(text)
    upgraded = tmp_path / "upgraded.prototxt"
    run_caffe(["upgrade_net_proto_text", str(legacy), str(upgraded)])
    assert io.upgrade_net(io.read_net(legacy)) == io.read_net(upgraded)


def test_every_v1_layer_type_upgrades_as_in_caffe(run_caffe, tmp_path):
    legacy = caffe_pb2.NetParameter(name="all_types")
    for value in caffe_pb2.V1LayerParameter.LayerType.values():
        legacy.layers.add(name=f"layer{value}", type=value, top=[f"top{value}"])
    legacy.layers.add(top=["unnamed"])
    path = io.write_prototxt(tmp_path / "legacy.prototxt", legacy)
    upgraded = tmp_path / "upgraded.prototxt"
    run_caffe(["upgrade_net_proto_text", str(path), str(upgraded)])
    ours = io.upgrade_net(legacy)
    assert len(ours.layer) == len(io.V1_LAYER_TYPES) + 1
    assert ours == io.read_net(upgraded)


def test_binary_upgrade_matches_caffe_upgrade_tool(run_caffe, tmp_path):
    legacy = caffe_pb2.NetParameter()
    legacy.CopyFrom(io.read_net(_write(tmp_path / "v1.prototxt", V1_NET)))
    rng = np.random.default_rng(5)
    legacy.layers[0].blobs.extend([_legacy_blob(rng.standard_normal((4, 3, 3, 3))), _legacy_blob(rng.standard_normal(4))])
    model = io.write_caffemodel(tmp_path / "v1.caffemodel", legacy)
    upgraded = tmp_path / "upgraded.caffemodel"
    run_caffe(["upgrade_net_proto_binary", str(model), str(upgraded)])
    assert io.upgrade_net(io.read_caffemodel(model)) == io.read_caffemodel(upgraded)


def test_solver_upgrade_matches_caffe_upgrade_tool(run_caffe, tmp_path):
    legacy = _write(tmp_path / "solver.prototxt", 'net: "n.prototxt"\nbase_lr: 0.01\nsolver_type: ADAGRAD\nsnapshot_prefix: "s"\n')
    upgraded = tmp_path / "upgraded.prototxt"
    run_caffe(["upgrade_solver_proto_text", str(legacy), str(upgraded)])
    assert io.upgrade_solver(io.read_solver(legacy)) == io.read_solver(upgraded)


@pytest.mark.parametrize("path", PROTOTXTS, ids=[str(p.relative_to(REPO)) for p in PROTOTXTS])
def test_project_prototxt_reads_as_caffe_reads_it(run_caffe, tmp_path, path):
    upgraded = tmp_path / "upgraded.prototxt"
    if path.name.startswith("solver"):
        run_caffe(["upgrade_solver_proto_text", str(path), str(upgraded)])
        assert io.upgrade_solver(io.read_solver(path)) == io.read_solver(upgraded)
    else:
        run_caffe(["upgrade_net_proto_text", str(path), str(upgraded)])
        assert io.upgrade_net(io.read_net(path)) == io.read_net(upgraded)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TRAIN_NET = """\
name: "regress"
layer {
  name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param {
    shape { dim: 4 dim: 6 } shape { dim: 4 dim: 3 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 0.5 }
  }
}
layer {
  name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } }
}
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "target" top: "loss" }
"""


def _solver(folder: Path, name: str, **settings) -> Path:
    solver = caffe_pb2.SolverParameter(net=str(folder / "train.prototxt"), lr_policy="fixed", display=1,
                                       solver_mode=caffe_pb2.SolverParameter.CPU, random_seed=1, **settings)
    return io.write_prototxt(folder / name, solver)


def test_solverstate_interchange(run_caffe, tmp_path):
    """Caffe's snapshot reads back through our io; a state and weights we write are what Caffe resumes from.

    The resumed run has base_lr 0, so one SGD step is exactly w -= momentum * history, history *= momentum.
    """
    _write(tmp_path / "train.prototxt", TRAIN_NET)
    first = _solver(tmp_path, "first.prototxt", base_lr=0.05, momentum=0.9, max_iter=3, snapshot=3,
                    snapshot_prefix=str(tmp_path / "caffe"))
    run_caffe(["caffe", "train", f"--solver={first}"])
    state = io.read_solverstate(tmp_path / "caffe_iter_3.solverstate")
    assert state.iter == 3 and state.learned_net == str(tmp_path / "caffe_iter_3.caffemodel")
    history = [io.blob_to_array(blob) for blob in state.history]
    assert [h.shape for h in history] == [(3, 6), (3,)] and all(np.abs(h).max() > 0 for h in history)
    weights = io.layer_blobs(io.read_caffemodel(state.learned_net))["fc"]

    rng = np.random.default_rng(6)
    ours_w = [rng.standard_normal(w.shape).astype(np.float32) for w in weights]
    ours_h = [rng.standard_normal(h.shape).astype(np.float32) for h in history]
    model = io.read_caffemodel(state.learned_net)
    fc = next(layer for layer in model.layer if layer.name == "fc")
    for blob, array in zip(fc.blobs, ours_w, strict=True):
        blob.CopyFrom(io.array_to_blob(array))
    ours_model = io.write_caffemodel(tmp_path / "ours.caffemodel", model)
    ours_state = caffe_pb2.SolverState(iter=7, learned_net=str(ours_model), current_step=0)
    ours_state.history.extend(io.array_to_blob(h) for h in ours_h)
    resume = io.write_solverstate(tmp_path / "ours.solverstate", ours_state)

    second = _solver(tmp_path, "second.prototxt", base_lr=0.0, momentum=0.5, max_iter=8,
                     snapshot_prefix=str(tmp_path / "resumed"))
    run_caffe(["caffe", "train", f"--solver={second}", f"--snapshot={resume}"])
    after = io.read_solverstate(tmp_path / "resumed_iter_8.solverstate")
    assert after.iter == 8
    new_w = io.layer_blobs(io.read_caffemodel(after.learned_net))["fc"]
    for w, h, w_after, h_after in zip(ours_w, ours_h, new_w, after.history, strict=True):
        np.testing.assert_allclose(io.blob_to_array(h_after), 0.5 * h, rtol=1e-6)
        np.testing.assert_allclose(w_after, w - 0.5 * h, rtol=1e-5, atol=1e-6)
