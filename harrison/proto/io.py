"""Caffe's files through the project's schema: prototxt nets and solvers (text), .caffemodel,
.solverstate and .binaryproto (binary), legacy-net upgrade, and blobs as numpy arrays.

Files are read as they are; `upgrade_net` and `upgrade_solver` turn legacy forms into the current
ones the way Caffe does when it loads them (V1 `layers` -> `layer`, net inputs -> an Input layer,
solver_type -> type).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypeVar

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message

from harrison.errors import HarrisonError
from harrison.files import atomic_path
from harrison.proto import caffe_pb2

M = TypeVar("M", bound=Message)

# Caffe's V1 enum layer types and the type strings the current format uses for them.
V1_LAYER_TYPES: dict[str, str] = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# Deprecated solver_type enum names and the `type` strings that replace them.
SOLVER_TYPES: dict[str, str] = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}

# Transformation settings that old data layers kept in their own parameter message.
_DATA_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_DATA_LAYER_PARAMS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param", "WINDOW_DATA": "window_data_param"}

_PARSE_POSITION = re.compile(r"^\d+:\d+ : ")


# ---- text files -------------------------------------------------------------------------------

def _read_text(path: str | os.PathLike, message: M, what: str) -> M:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise HarrisonError(f"{path}: {what} not found; check the path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise HarrisonError(f"{path}: cannot read the {what} ({exc}); it must be a text prototxt") from exc
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        detail = _PARSE_POSITION.sub("", str(exc)).rstrip(".")
        raise HarrisonError(
            f"{path}:{exc.GetLine()}:{exc.GetColumn()}: malformed {what}: {detail}; fix that line "
            f"(names and values follow Caffe's caffe.proto, message {message.DESCRIPTOR.name})"
        ) from exc
    return message


def read_net(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Parse a text prototxt net as written (call `upgrade_net` for the current form)."""
    return _read_text(path, caffe_pb2.NetParameter(), "net prototxt")


def read_solver(path: str | os.PathLike) -> caffe_pb2.SolverParameter:
    """Parse a text prototxt solver as written (call `upgrade_solver` for the current form)."""
    return _read_text(path, caffe_pb2.SolverParameter(), "solver prototxt")


def write_prototxt(path: str | os.PathLike, message: Message) -> Path:
    """Write any message (net, solver) as text prototxt, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text_format.MessageToString(message), encoding="utf-8")
    return Path(path)


# ---- binary files -----------------------------------------------------------------------------

def _read_binary(path: str | os.PathLike, message: M, what: str) -> M:
    """Parse a binary message; the upb runtime has no 64 MB limit, so VGG-size files load whole."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise HarrisonError(f"{path}: {what} not found; check the path") from exc
    except OSError as exc:
        raise HarrisonError(f"{path}: cannot read the {what} ({exc.strerror})") from exc
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise HarrisonError(
            f"{path}: not a valid binary {what} ({exc}); the file is truncated or of another kind "
            f"(a text prototxt or an HDF5 snapshot?); copy or write it again"
        ) from exc
    return message


def _write_binary(path: str | os.PathLike, message: Message) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(message.SerializeToString())
    return Path(path)


def read_caffemodel(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Read a binary .caffemodel (a NetParameter with blobs) as written, `layer` or legacy `layers`."""
    return _read_binary(path, caffe_pb2.NetParameter(), ".caffemodel")


def write_caffemodel(path: str | os.PathLike, net_param: caffe_pb2.NetParameter) -> Path:
    """Write a NetParameter as a binary .caffemodel, atomically."""
    return _write_binary(path, net_param)


def read_solverstate(path: str | os.PathLike) -> caffe_pb2.SolverState:
    """Read a binary .solverstate (iter, learned_net, history blobs, current_step)."""
    return _read_binary(path, caffe_pb2.SolverState(), ".solverstate")


def write_solverstate(path: str | os.PathLike, state: caffe_pb2.SolverState) -> Path:
    """Write a SolverState as a binary .solverstate, atomically."""
    return _write_binary(path, state)


def read_binaryproto_mean(path: str | os.PathLike) -> np.ndarray:
    """Read a mean.binaryproto (one BlobProto of shape 1 x C x H x W) as a C x H x W array."""
    mean = blob_to_array(_read_binary(path, caffe_pb2.BlobProto(), "mean .binaryproto"))
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise HarrisonError(f"{path}: a mean image has shape 1 x C x H x W, this one {mean.shape}; use a mean file made by compute_image_mean")
    return mean


# ---- blobs ------------------------------------------------------------------------------------

def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """A blob's shape as Caffe reads it: the legacy num/channels/height/width when any is set, else `shape`."""
    if any(blob.HasField(name) for name in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(blob.shape.dim)


def blob_to_array(blob: caffe_pb2.BlobProto) -> np.ndarray:
    """A blob's values as an array of its shape: float32 from `data`, float64 from `double_data`.

    Old files store an InnerProduct weight as the legacy 4-D shape (1, 1, N_out, K); it comes back
    4-D, as stored, and the caller reshapes it to (N_out, K) (Caffe accepts both for that layer).
    """
    shape = blob_shape(blob)
    values = np.array(blob.double_data, dtype=np.float64) if len(blob.double_data) else np.array(blob.data, dtype=np.float32)
    if values.size != int(np.prod(shape)):
        raise HarrisonError(
            f"a blob of shape {shape} holds {values.size} values instead of {int(np.prod(shape))}; "
            "the weights file is damaged or not a Caffe file"
        )
    return values.reshape(shape)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def array_to_blob(array: np.ndarray) -> caffe_pb2.BlobProto:
    """A BlobProto holding `array` as float32 `data` with its `shape`.

    The packed data field is handed to the protobuf parser as wire bytes: 25x faster than filling
    the repeated field value by value, which matters for VGG-size weights.
    """
    values = np.ascontiguousarray(array, dtype="<f4")
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(values.shape)
    raw = values.tobytes()
    if raw:
        data_tag = (caffe_pb2.BlobProto.DATA_FIELD_NUMBER << 3) | 2
        blob.MergeFromString(_varint(data_tag) + _varint(len(raw)) + raw)
    return blob


def layer_blobs(net_param: caffe_pb2.NetParameter) -> dict[str, list[np.ndarray]]:
    """Every layer's blobs as arrays, by layer name, from `layer` and legacy `layers` (layers without blobs left out)."""
    blobs: dict[str, list[np.ndarray]] = {}
    for layer in [*net_param.layer, *net_param.layers]:
        if len(layer.blobs):
            blobs[layer.name] = [blob_to_array(blob) for blob in layer.blobs]
    return blobs


# ---- legacy upgrade ---------------------------------------------------------------------------

def _upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter, out: caffe_pb2.LayerParameter) -> None:
    type_name = caffe_pb2.V1LayerParameter.LayerType.Name(v1.type)
    if v1.HasField("name"):
        out.name = v1.name
    if v1.HasField("type"):
        out.type = V1_LAYER_TYPES[type_name]
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    out.blobs.extend(v1.blobs)
    out.loss_weight.extend(v1.loss_weight)
    specs = [("name", list(v1.param)), ("share_mode", list(v1.blob_share_mode)),
             ("lr_mult", list(v1.blobs_lr)), ("decay_mult", list(v1.weight_decay))]
    for _ in range(max(len(values) for _, values in specs)):
        out.param.add()
    for field, values in specs:
        for spec, value in zip(out.param, values):
            setattr(spec, field, value)
    for field, value in v1.ListFields():
        if field.name.endswith("_param") and field.name != "param":
            getattr(out, field.name).CopyFrom(value)
    data_param = _DATA_LAYER_PARAMS.get(type_name)
    if data_param:
        source = getattr(out, data_param)
        for field in _DATA_TRANSFORM_FIELDS:
            if source.HasField(field):
                setattr(out.transform_param, field, getattr(source, field))
                source.ClearField(field)


def _upgrade_inputs(net: caffe_pb2.NetParameter) -> None:
    """Legacy `input` + `input_shape`/`input_dim` become one Input layer named "input", first in the net."""
    if len(net.input_shape) or len(net.input_dim):
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        layer.top.extend(net.input)
        for index in range(len(net.input)):
            shape = layer.input_param.shape.add()
            if len(net.input_shape):
                shape.CopyFrom(net.input_shape[index])
            else:
                shape.dim.extend(net.input_dim[4 * index:4 * index + 4])
        layers = [layer, *net.layer]
        net.ClearField("layer")
        net.layer.extend(layers)
    for field in ("input", "input_shape", "input_dim"):
        net.ClearField(field)


def upgrade_net(net_param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """A copy of the net in the current format, as Caffe's UpgradeNetAsNeeded leaves it.

    V1 `layers` become `layer` (type strings; param/blob_share_mode/blobs_lr/weight_decay become
    ParamSpec name/share_mode/lr_mult/decay_mult; every *_param and the blobs carried over; old data
    layers' scale/mean_file/crop_size/mirror moved to transform_param); legacy net inputs become an
    Input layer; BatchNorm's three obsolete ParamSpecs are dropped. Current nets come back unchanged.
    """
    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    for v1 in net.layers:
        if v1.HasField("layer"):
            raise HarrisonError(
                f"net {net.name!r}: layer {v1.layer.name!r} is in Caffe's V0 format (before 2014); "
                "convert the file once with Caffe's upgrade_net_proto_text / upgrade_net_proto_binary"
            )
    if len(net.layers):
        if len(net.layer):
            raise HarrisonError(f"net {net.name!r} mixes `layer` and legacy `layers` entries; keep one form")
        for v1 in net.layers:
            _upgrade_v1_layer(v1, net.layer.add())
        net.ClearField("layers")
    _upgrade_inputs(net)
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            layer.ClearField("param")
    return net


def upgrade_solver(solver: caffe_pb2.SolverParameter) -> caffe_pb2.SolverParameter:
    """A copy of the solver in the current format: the deprecated solver_type enum becomes `type`."""
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(solver)
    if out.HasField("solver_type"):
        if out.HasField("type") and out.type != SOLVER_TYPES[out.SolverType.Name(out.solver_type)]:
            raise HarrisonError("the solver sets both `type` and the deprecated `solver_type`, differently; keep `type`")
        out.type = SOLVER_TYPES[out.SolverType.Name(out.solver_type)]
        out.ClearField("solver_type")
    return out
