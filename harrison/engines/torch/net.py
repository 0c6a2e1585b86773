"""A Caffe net on torch: built from a NetParameter with Caffe's Net::Init semantics.

- Layers are kept when the net state (phase, stages, level) meets their include/exclude rules.
- Blobs are named: a layer reads the latest value of each bottom name and (re)binds its tops, so
  in-place layers (top == bottom) leave the blob with the post-layer value, as in Caffe.
- Parameters are filled with their fillers (a seeded generator, in layer and blob order) unless the
  layer carries blobs; a ParamSpec ``name`` shares one tensor between layers. ``learnable`` lists
  them in Caffe's learnable_params order with lr_mult and decay_mult.
- The net's outputs are the tops that no later layer consumes (sorted by name, as Caffe's set).
- Loss: each top's loss_weight (1 for the first top of a ``*Loss`` layer by default) times the sum
  of its values.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from harrison.engines.torch.data import DATA_LAYERS, DataLayer
from harrison.engines.torch.fillers import fill
from harrison.engines.torch.layers import FUSED_CONV_RELU, LAYERS, Convolution, Input, Layer, ParamBlob, ReLU, Shape
from harrison.errors import HarrisonError
from harrison.proto import caffe_pb2
from harrison.proto.io import (array_to_blob, blob_shape, blob_to_array, read_caffemodel, read_net, upgrade_net,
                               write_caffemodel)

PHASES = ("TRAIN", "TEST")


@dataclasses.dataclass
class Learnable:
    """One learnable parameter blob, in Caffe's learnable_params order."""

    layer: str
    index: int
    param: torch.Tensor
    lr_mult: float
    decay_mult: float


def state_meets_rule(phase: str, level: int, stages: Sequence[str], rule: caffe_pb2.NetStateRule) -> bool:
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and caffe_pb2.Phase.Name(rule.phase) != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)


def layer_included(layer: caffe_pb2.LayerParameter, phase: str, level: int, stages: Sequence[str]) -> bool:
    """Caffe's Net::FilterNet for one layer: any include rule met, or (without include rules) no exclude rule met."""
    if len(layer.include) and len(layer.exclude):
        raise HarrisonError(f"layer {layer.name!r} has both include and exclude rules; Caffe allows one kind")
    if len(layer.include):
        return any(state_meets_rule(phase, level, stages, rule) for rule in layer.include)
    return not any(state_meets_rule(phase, level, stages, rule) for rule in layer.exclude)


def check_blob_sources(layers: Sequence[caffe_pb2.LayerParameter]) -> None:
    """Refuse a top that names an existing blob unless the layer works in place, as Caffe's Net::Init does.

    Caffe splits a top consumed by several layers into copies; a layer "in place" on such a blob then
    reads a copy and its top would be a second blob of the same name, which Caffe refuses.
    """
    producer: dict[str, tuple[int, int]] = {}
    sources: list[list[tuple[int, int] | None]] = []
    consumers: dict[tuple[int, int], int] = {}
    for index, layer in enumerate(layers):
        sources.append([producer.get(bottom) for bottom in layer.bottom])
        for source in sources[-1]:
            if source is not None:
                consumers[source] = consumers.get(source, 0) + 1
        for j, top in enumerate(layer.top):
            producer[top] = (index, j)
    produced: set[str] = set()
    for index, layer in enumerate(layers):
        for j, top in enumerate(layer.top):
            in_place = j < len(layer.bottom) and layer.bottom[j] == top and consumers.get(sources[index][j]) == 1
            if top in produced and not in_place:
                raise HarrisonError(
                    f"layer {layer.name!r} ({layer.type}): top blob {top!r} is produced by multiple sources (Caffe refuses this: "
                    "a layer works in place only on a blob no other layer reads); give the top a new name"
                )
            produced.add(top)


def _stream_seed(*values: int) -> int:
    """A 63-bit seed derived from integers (net seed, iteration, layer index, ...)."""
    entropy = [value % (1 << 63) for value in values]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _shape_matches(blob: caffe_pb2.BlobProto, shape: Shape) -> bool:
    """Caffe's Blob::ShapeEquals: legacy num/channels/height/width compare against the shape padded to 4-D."""
    stored = blob_shape(blob)
    if any(blob.HasField(name) for name in ("num", "channels", "height", "width")):
        return len(shape) <= 4 and stored == (1,) * (4 - len(shape)) + tuple(shape)
    return stored == tuple(shape)


class TorchNet:
    """A net of one phase on one device. See the module docstring for the semantics."""

    def __init__(self, param: caffe_pb2.NetParameter, phase: str, device: torch.device | str, *,
                 stages: Sequence[str] = (), level: int = 0, seed: int = 0, root: str | os.PathLike | None = None) -> None:
        """``root`` is the folder that relative paths in the net (data sources, mean files) resolve
        against, as Caffe's working directory; by default the process's."""
        if phase not in PHASES:
            raise HarrisonError(f"phase {phase!r} is not one of {', '.join(PHASES)}")
        param = upgrade_net(param)
        self.name = param.name
        self.phase = phase
        self.device = torch.device(device)
        self.seed = seed
        self.root = Path.cwd() if root is None else Path(root)
        # oneDNN's CPU convolutions run 15-40% faster on NHWC data; cuDNN's float32 ones prefer NCHW
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.layers: list[Layer] = []
        self.params: list[list[torch.Tensor]] = []
        self.learnable: list[Learnable] = []
        self.loss_weights: list[tuple[str, float]] = []
        self.blob_shapes: dict[str, Shape] = {}
        self.input_names: list[str] = []
        self._iteration = 0
        self._forwards = 0
        generator = torch.Generator().manual_seed(seed % (1 << 63))
        owners: dict[str, tuple[Shape, torch.Tensor, Learnable]] = {}
        available: set[str] = set()
        kept = [layer for layer in param.layer if layer_included(layer, phase, level, stages)]
        check_blob_sources(kept)
        for layer_param in kept:
            index = len(self.layers)
            layer = self._make_layer(layer_param, index)
            for bottom in layer_param.bottom:
                if bottom not in self.blob_shapes:
                    raise layer.error(f"bottom {bottom!r} is not a top of any earlier layer in the {phase} net")
                available.discard(bottom)
            bottom_shapes = [self.blob_shapes[b] for b in layer_param.bottom]
            blobs = layer.setup(bottom_shapes)
            tensors = self._make_params(layer, blobs, generator, owners)
            self.layers.append(layer)
            self.params.append(tensors)
            if len(layer_param.blobs):
                self._copy_layer(index, layer_param, "the net's own blobs")
                layer_param.ClearField("blobs")
            tops = layer.top_shapes(bottom_shapes, [b.shape for b in blobs])
            if len(tops) != len(layer_param.top):
                raise layer.error(f"produces {len(tops)} top blob(s), the prototxt names {len(layer_param.top)}")
            self._add_loss_weights(layer, tops)
            for name, shape in zip(layer_param.top, tops):
                self.blob_shapes[name] = shape
                available.add(name)
            if isinstance(layer, Input):
                self.input_names.extend(layer_param.top)
        self.output_names = sorted(available)
        self._layer_index = {layer.name: index for index, layer in enumerate(self.layers)}
        self._fusable = self._conv_relu_pairs()

    @classmethod
    def from_file(cls, path: str | os.PathLike, phase: str, device: torch.device | str, **kw) -> "TorchNet":
        """The net of a prototxt file (legacy V1 files are upgraded)."""
        return cls(read_net(path), phase, device, **kw)

    def _make_layer(self, layer_param: caffe_pb2.LayerParameter, index: int) -> Layer:
        if layer_param.type in DATA_LAYERS:
            return DATA_LAYERS[layer_param.type](layer_param, self.phase, _stream_seed(self.seed, index), self.root)
        if layer_param.type in LAYERS:
            return LAYERS[layer_param.type](layer_param, self.phase)
        supported = ", ".join(sorted([*LAYERS, *DATA_LAYERS]))
        raise HarrisonError(
            f"layer {layer_param.name!r} has type {layer_param.type!r}, which the torch engine does not implement "
            f"(it runs {supported}); use --engine caffe for this net"
        )

    def _make_params(self, layer: Layer, blobs: list[ParamBlob], generator: torch.Generator,
                     owners: dict[str, tuple[Shape, torch.Tensor, Learnable]]) -> list[torch.Tensor]:
        """The layer's parameter tensors: filled, zeros when the layer carries its own blobs, or shared by name."""
        tensors = []
        for j, blob in enumerate(blobs):
            spec = layer.param.param[j] if j < len(layer.param.param) else caffe_pb2.ParamSpec()
            if spec.name and spec.name in owners:
                shape, tensor, learnable = owners[spec.name]
                if shape != blob.shape:
                    raise layer.error(f"shares parameter {spec.name!r} of shape {shape} but needs {blob.shape}")
                if spec.HasField("lr_mult"):
                    learnable.lr_mult = spec.lr_mult
                if spec.HasField("decay_mult"):
                    learnable.decay_mult = spec.decay_mult
                tensors.append(tensor)
                continue
            if len(layer.param.blobs):
                values = torch.zeros(blob.shape)
            else:
                values = fill(blob.filler, blob.shape, generator, f"layer {layer.name!r} ({layer.type}) blob {j}")
            tensor = values.to(self.device).requires_grad_()
            learnable = Learnable(layer.name, j, tensor, spec.lr_mult, spec.decay_mult)
            self.learnable.append(learnable)
            if spec.name:
                owners[spec.name] = (blob.shape, tensor, learnable)
            tensors.append(tensor)
        return tensors

    def _conv_relu_pairs(self) -> dict[int, int]:
        """Convolutions followed at once by an in-place plain ReLU on their top: {conv index: ReLU index}.

        The blob's pre-ReLU value is never visible in Caffe then, so inference on CPU may fuse the two.
        """
        if self.device.type != "cpu" or FUSED_CONV_RELU is None:
            return {}
        pairs = {}
        for index, (conv, relu) in enumerate(zip(self.layers, self.layers[1:])):
            if (isinstance(conv, Convolution) and isinstance(relu, ReLU) and not relu.slope
                    and list(relu.param.bottom) == list(relu.param.top) == list(conv.param.top)):
                pairs[index] = index + 1
        return pairs

    def _add_loss_weights(self, layer: Layer, tops: list[Shape]) -> None:
        weights = list(layer.param.loss_weight)
        if weights and len(weights) != len(tops):
            raise layer.error(f"gives {len(weights)} loss_weight values for {len(tops)} tops; give one per top")
        if not weights and layer.type.endswith("Loss") and tops:
            weights = [1.0] + [0.0] * (len(tops) - 1)
        for name, weight in zip(layer.param.top, weights):
            if weight:
                self.loss_weights.append((name, float(weight)))

    # ---- running ----------------------------------------------------------------------------

    def forward(self, inputs: Mapping[str, torch.Tensor] | None = None,
                outputs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Run the layers of this phase once and return the final value of every blob.

        Input layers take ``inputs[top]`` (any shape the later layers accept); data layers read their
        next batch. With ``outputs``, layers after the last one that writes any of those blobs are
        skipped. The TEST phase runs without autograd.
        """
        inputs = inputs or {}
        stop = len(self.layers)
        if outputs is not None:
            missing = [name for name in outputs if name not in self.blob_shapes]
            if missing:
                raise HarrisonError(f"net {self.name!r} ({self.phase}) has no blob {missing[0]!r}; its blobs: {', '.join(self.blob_shapes)}")
            wanted = set(outputs)
            stop = 1 + max((i for i, layer in enumerate(self.layers) if wanted & set(layer.param.top)), default=-1)
        blobs: dict[str, torch.Tensor] = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.phase == "TRAIN"):
            fuse = not torch.is_grad_enabled()
            skip = -1
            for index, layer in enumerate(self.layers[:stop]):
                if index == skip:
                    continue
                fused = fuse and index in self._fusable
                if fused:
                    skip = self._fusable[index]
                tops = self._run_layer(index, layer, blobs, inputs, fused)
                for name, value in zip(layer.param.top, tops):
                    blobs[name] = value
        self._forwards += 1
        return blobs

    def _run_layer(self, index: int, layer: Layer, blobs: dict[str, torch.Tensor],
                   inputs: Mapping[str, torch.Tensor], fused: bool = False) -> list[torch.Tensor]:
        if isinstance(layer, Input):
            missing = [top for top in layer.param.top if top not in inputs]
            if missing:
                raise HarrisonError(f"net {self.name!r}: no value given for the input blob {missing[0]!r}")
            return [self._placed(torch.as_tensor(inputs[top], dtype=torch.float32)) for top in layer.param.top]
        if isinstance(layer, DataLayer):
            return [self._placed(top) for top in layer.forward([], [])]
        if layer.stochastic and self.phase == "TRAIN":
            layer.generator = torch.Generator(self.device).manual_seed(
                _stream_seed(self.seed, self._iteration, index, self._forwards))
        bottoms = [blobs[name] for name in layer.param.bottom]
        try:
            if fused:
                return layer.forward_relu(bottoms, self.params[index])
            return layer.forward(bottoms, self.params[index])
        except RuntimeError as exc:
            shapes = [tuple(b.shape) for b in bottoms]
            raise layer.error(f"failed on bottoms of shapes {shapes}: {exc}") from exc

    def _placed(self, tensor: torch.Tensor) -> torch.Tensor:
        """An input on the net's device; images (4-D) in the device's preferred memory format."""
        tensor = tensor.to(self.device, non_blocking=True)
        return tensor.contiguous(memory_format=self.memory_format) if tensor.dim() == 4 else tensor

    def loss(self, blobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The net's loss: the sum over loss tops of loss_weight times the sum of the top's values."""
        total = torch.zeros((), device=self.device)
        for name, weight in self.loss_weights:
            total = total + weight * blobs[name].sum()
        return total

    def set_iteration(self, iteration: int) -> None:
        """Seed stochastic layers for ``iteration``: masks depend on (seed, iteration, layer, pass within it)."""
        self._iteration = iteration
        self._forwards = 0

    def data_position(self) -> dict:
        """Where each data layer is, by layer name."""
        return {layer.name: layer.position() for layer in self.layers if isinstance(layer, DataLayer)}

    def seek_data(self, iterations: int) -> None:
        """Advance every data layer as if ``iterations`` forward passes had run."""
        for layer in self.layers:
            if isinstance(layer, DataLayer):
                layer.seek(iterations)

    # ---- weights ----------------------------------------------------------------------------

    def _copy_layer(self, index: int, source: caffe_pb2.LayerParameter, origin: str) -> None:
        layer, targets = self.layers[index], self.params[index]
        if len(source.blobs) != len(targets):
            raise layer.error(f"{origin} hold {len(source.blobs)} blob(s), the net's layer has {len(targets)}; "
                              "the weights belong to another net")
        for j, (blob, target) in enumerate(zip(source.blobs, targets)):
            shape = tuple(target.shape)
            if not _shape_matches(blob, shape):
                raise layer.error(f"blob {j} in {origin} has shape {blob_shape(blob)}, the net expects {shape}; "
                                  "the weights belong to another net or another input size")
            values = torch.from_numpy(np.ascontiguousarray(blob_to_array(blob), dtype=np.float32)).reshape(shape)
            with torch.no_grad():
                target.copy_(values)

    def copy_from(self, param: caffe_pb2.NetParameter, origin: str = "the weights") -> None:
        """Caffe's CopyTrainedLayersFrom: blobs by layer name; layers the net lacks are skipped."""
        for source in [*param.layer, *param.layers]:
            index = self._layer_index.get(source.name)
            if index is not None:
                self._copy_layer(index, source, origin)

    def load_caffemodel(self, path: str | os.PathLike) -> None:
        """Copy the weights of a .caffemodel (current or V1 format) into the net, by layer name."""
        self.copy_from(read_caffemodel(path), str(path))

    def to_net_parameter(self) -> caffe_pb2.NetParameter:
        """Caffe's Net::ToProto without diffs: every layer's parameter and its blobs."""
        out = caffe_pb2.NetParameter(name=self.name)
        for layer, tensors in zip(self.layers, self.params):
            layer_param = out.layer.add()
            layer_param.CopyFrom(layer.param)
            layer_param.ClearField("blobs")
            if not layer_param.HasField("phase"):
                layer_param.phase = caffe_pb2.Phase.Value(self.phase)
            for tensor in tensors:
                layer_param.blobs.append(array_to_blob(tensor.detach().cpu().numpy()))
        return out

    def save_caffemodel(self, path: str | os.PathLike) -> Path:
        """Write the net's weights as a binary .caffemodel (atomically)."""
        return write_caffemodel(path, self.to_net_parameter())

    def share_weights(self, other: "TorchNet") -> None:
        """Use ``other``'s parameter tensors for the layers of the same name (Caffe's ShareTrainedLayersWith)."""
        for index, layer in enumerate(self.layers):
            source = other._layer_index.get(layer.name)
            if source is None or not self.params[index]:
                continue
            theirs = other.params[source]
            if [t.shape for t in theirs] != [t.shape for t in self.params[index]]:
                raise layer.error(f"cannot share weights with the {other.phase} net: shapes "
                                  f"{[tuple(t.shape) for t in theirs]} against {[tuple(t.shape) for t in self.params[index]]}")
            self.params[index] = list(theirs)
