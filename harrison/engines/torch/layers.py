"""Caffe's computational layers as torch functions (caffe-facts.md, "Layers").

A layer is built from its LayerParameter, declares its parameter blobs from the bottom shapes
(``setup``, as Caffe's LayerSetUp) and maps bottom tensors plus parameter tensors to top tensors
(``forward``). Top shapes are found by running ``forward`` on meta tensors, so shape rules live in
one place. Backward is torch's autograd; every op here has Caffe's gradient.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harrison.engines.torch.linear import linear
from harrison.engines.torch.onednn import onednn_op
from harrison.errors import HarrisonError
from harrison.proto import caffe_pb2

Shape = tuple[int, ...]


@dataclasses.dataclass
class ParamBlob:
    """A parameter blob a layer owns: its shape and the filler that initialises it."""

    shape: Shape
    filler: caffe_pb2.FillerParameter


class Layer:
    """One layer of a net; subclasses set ``type`` and override ``setup`` and ``forward``."""

    type: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False

    def __init__(self, param: caffe_pb2.LayerParameter, phase: str) -> None:
        self.param = param
        self.name = param.name
        self.phase = phase
        self.generator: torch.Generator | None = None
        """Set by the net before each forward pass for stochastic layers."""

    def error(self, message: str) -> HarrisonError:
        """A HarrisonError that names this layer and its type."""
        return HarrisonError(f"layer {self.name!r} ({self.type}): {message}")

    def check_bottoms(self, shapes: Sequence[Shape], count: int | tuple[int, int]) -> None:
        """Raise unless the layer has ``count`` bottoms (an exact number or an inclusive range)."""
        low, high = (count, count) if isinstance(count, int) else count
        if not low <= len(shapes) <= high:
            want = str(low) if low == high else f"{low} to {high}"
            raise self.error(f"takes {want} bottom blob(s), the prototxt gives {len(shapes)}")

    def setup(self, bottom_shapes: Sequence[Shape]) -> list[ParamBlob]:
        """Check the bottoms and declare the parameter blobs (none by default)."""
        return []

    def forward(self, bottoms: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The top tensors for ``bottoms`` with ``params``."""
        raise NotImplementedError

    def top_shapes(self, bottom_shapes: Sequence[Shape], param_shapes: Sequence[Shape]) -> list[Shape]:
        """Top shapes, found by a forward pass on meta tensors."""
        meta = [torch.empty(shape, device="meta") for shape in bottom_shapes]
        params = [torch.empty(shape, device="meta") for shape in param_shapes]
        try:
            return [tuple(top.shape) for top in self.forward(meta, params)]
        except RuntimeError as exc:
            raise self.error(f"cannot take bottoms of shapes {list(bottom_shapes)}: {exc}") from exc


def canonical_axis(axis: int, num_axes: int, layer: Layer) -> int:
    """A possibly negative axis index as a position, checked as Caffe's CanonicalAxisIndex does."""
    if not -num_axes <= axis < num_axes:
        raise layer.error(f"axis {axis} is out of range for a blob with {num_axes} axes")
    return axis % num_axes


def _two(values: Sequence[int], h_set: bool, h: int, w: int, default: int, what: str, layer: Layer) -> tuple[int, int]:
    """Caffe's spatial settings: explicit _h/_w fields, else one value for both axes or one per axis."""
    if h_set:
        if len(values):
            raise layer.error(f"set either {what} or {what}_h/{what}_w, not both")
        return h, w
    if len(values) == 0:
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise layer.error(f"{what} has {len(values)} values; 2-D layers take 1 or 2")


class Input(Layer):
    """The net's input blobs; the net hands in the values (``input_param.shape`` gives declared shapes)."""

    type = "Input"

    def setup(self, bottom_shapes):
        self.check_bottoms(bottom_shapes, 0)
        return []

    def top_shapes(self, bottom_shapes, param_shapes):
        """The declared shapes: one for every top, or one per top."""
        shapes = [tuple(int(d) for d in shape.dim) for shape in self.param.input_param.shape]
        if len(shapes) == 1:
            return shapes * len(self.param.top)
        if len(shapes) != len(self.param.top):
            raise self.error(f"input_param gives {len(shapes)} shapes for {len(self.param.top)} tops; give one, or one per top")
        return shapes


class Convolution(Layer):
    """2-D convolution with pad, stride, kernel (incl. the _h/_w forms), dilation, group and bias_term."""

    type = "Convolution"

    def setup(self, bottom_shapes: Sequence[Shape]) -> list[ParamBlob]:
        self.check_bottoms(bottom_shapes, 1)
        p = self.param.convolution_param
        shape = bottom_shapes[0]
        if p.axis != 1 or len(shape) != 4:
            raise self.error(f"only 2-D convolution of N x C x H x W blobs with axis 1 is supported (bottom {shape}, axis {p.axis})")
        self.kernel = _two(p.kernel_size, p.HasField("kernel_h") or p.HasField("kernel_w"), p.kernel_h, p.kernel_w, 0, "kernel", self)
        if min(self.kernel) <= 0:
            raise self.error("kernel_size (or kernel_h and kernel_w) must be positive")
        self.stride = _two(p.stride, p.HasField("stride_h") or p.HasField("stride_w"), p.stride_h, p.stride_w, 1, "stride", self)
        if min(self.stride) <= 0:
            raise self.error("the stride must be positive (set stride, or both stride_h and stride_w)")
        self.pad = _two(p.pad, p.HasField("pad_h") or p.HasField("pad_w"), p.pad_h, p.pad_w, 0, "pad", self)
        self.dilation = _two(p.dilation, False, 0, 0, 1, "dilation", self)
        self.group = p.group
        channels = shape[1]
        if channels % self.group or p.num_output % self.group:
            raise self.error(f"channels {channels} and num_output {p.num_output} must both divide by group {self.group}")
        blobs = [ParamBlob((p.num_output, channels // self.group, *self.kernel), p.weight_filler)]
        if p.bias_term:
            blobs.append(ParamBlob((p.num_output,), p.bias_filler))
        return blobs

    def forward(self, bottoms, params):
        bias = params[1] if len(params) > 1 else None
        return [F.conv2d(bottoms[0], params[0], bias, self.stride, self.pad, self.dilation, self.group)]

    def forward_relu(self, bottoms, params):
        """The convolution followed by ReLU as one oneDNN operation (CPU, no autograd; the same values)."""
        bias = params[1] if len(params) > 1 else None
        return [FUSED_CONV_RELU(bottoms[0], params[0], bias, list(self.pad), list(self.stride), list(self.dilation),
                                self.group, "relu", [], "")]


FUSED_CONV_RELU = onednn_op("_convolution_pointwise")
"""oneDNN's convolution with a post-op (here ReLU), where this build of torch has it."""


def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    """Caffe's pooled output size: ceil (or floor) of (size + 2 pad - kernel) / stride, plus one,
    less one when padding would make the last window start inside the padding."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


class Pooling(Layer):
    """MAX and AVE pooling with Caffe's output size and padding rule, global_pooling.

    AVE divides by the window's extent clipped to the padded bounds (padding inside counts), as Caffe.
    Torch's own pooling is used whenever its output size and padding limits agree with Caffe's;
    other geometries pad or crop explicitly.
    """

    type = "Pooling"

    def setup(self, bottom_shapes: Sequence[Shape]) -> list[ParamBlob]:
        self.check_bottoms(bottom_shapes, 1)
        if len(self.param.top) != 1:
            raise self.error("only one top is supported (no max-pooling mask top)")
        p = self.param.pooling_param
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
        if method not in ("MAX", "AVE"):
            raise self.error(f"pool {method} is not supported by the torch engine; use MAX or AVE")
        self.method = method
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"pools N x C x H x W blobs, the bottom is {bottom_shapes[0]}")
        self.ceil = caffe_pb2.PoolingParameter.RoundMode.Name(p.round_mode) == "CEIL"
        self.global_pooling = p.global_pooling
        if self.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.error("with global_pooling the kernel size is the bottom's; remove kernel_size")
        else:
            if not (p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")):
                raise self.error("set kernel_size, or kernel_h and kernel_w")
            self.kernel = self._pair(p, "kernel_size", "kernel")
            if min(self.kernel) <= 0:
                raise self.error("the kernel must be positive")
        self.pad = self._pair(p, "pad", "pad")
        self.stride = self._pair(p, "stride", "stride")
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("global_pooling takes pad 0 and stride 1")
        if not self.global_pooling and (self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]):
            raise self.error(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        return []

    def _pair(self, p: caffe_pb2.PoolingParameter, field: str, stem: str) -> tuple[int, int]:
        """One value for both axes, or both of the _h and _w fields (Caffe refuses other mixes)."""
        h_set, w_set = p.HasField(f"{stem}_h"), p.HasField(f"{stem}_w")
        if not (h_set or w_set):
            return getattr(p, field), getattr(p, field)
        if not (h_set and w_set) or p.HasField(field):
            raise self.error(f"set {field}, or both {stem}_h and {stem}_w")
        return getattr(p, f"{stem}_h"), getattr(p, f"{stem}_w")

    def forward(self, bottoms, params):
        x = bottoms[0]
        height, width = x.shape[-2:]
        if self.global_pooling:
            kernel = (height, width)
            pool = F.max_pool2d if self.method == "MAX" else F.avg_pool2d
            return [pool(x, kernel)]
        kernel, stride, pad = self.kernel, self.stride, self.pad
        out = [caffe_pooled_size(n, k, s, p, self.ceil) for n, k, s, p in zip((height, width), kernel, stride, pad)]
        native = all(
            _torch_pooled_size(n, k, s, p, self.ceil) == o and 2 * p <= k
            for n, k, s, p, o in zip((height, width), kernel, stride, pad, out)
        )
        if native:
            if self.method == "MAX":
                return [F.max_pool2d(x, kernel, stride, pad, ceil_mode=self.ceil)]
            return [F.avg_pool2d(x, kernel, stride, pad, ceil_mode=self.ceil, count_include_pad=True)]
        return [self._explicit(x, (height, width), kernel, stride, pad, out)]

    def _explicit(self, x, size, kernel, stride, pad, out):
        """Pad (or crop) the input so that an unpadded floor-mode pooling gives Caffe's windows."""
        extra = [(o - 1) * s + k - n - p for n, k, s, p, o in zip(size, kernel, stride, pad, out)]
        fill = torch.finfo(torch.float32).min if self.method == "MAX" else 0.0
        x = F.pad(x, (pad[1], max(extra[1], 0), pad[0], max(extra[0], 0)), value=fill)
        x = x[..., : pad[0] + size[0] + extra[0], : pad[1] + size[1] + extra[1]]
        if self.method == "MAX":
            return F.max_pool2d(x, kernel, stride)
        sums = F.avg_pool2d(x, kernel, stride, divisor_override=1)
        extents = []
        for n, k, s, p, o in zip(size, kernel, stride, pad, out):
            start = np.arange(o) * s - p
            extents.append(np.minimum(start + k, n + p) - start)
        divisor = torch.from_numpy(np.outer(*extents).astype(np.float32))
        return sums / divisor.to(sums.device)


class ReLU(Layer):
    """max(x, 0) + negative_slope * min(x, 0)."""

    type = "ReLU"

    def setup(self, bottom_shapes):
        self.check_bottoms(bottom_shapes, 1)
        self.slope = self.param.relu_param.negative_slope
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [F.leaky_relu(x, self.slope) if self.slope else F.relu(x)]


class InnerProduct(Layer):
    """y = x W^T + b over the axes from ``axis`` on (W is K x N_out with ``transpose``)."""

    type = "InnerProduct"

    def setup(self, bottom_shapes):
        self.check_bottoms(bottom_shapes, 1)
        p = self.param.inner_product_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self)
        self.inputs = math.prod(shape[self.axis:])
        self.transpose = p.transpose
        weight = (self.inputs, p.num_output) if p.transpose else (p.num_output, self.inputs)
        blobs = [ParamBlob(weight, p.weight_filler)]
        if p.bias_term:
            blobs.append(ParamBlob((p.num_output,), p.bias_filler))
        return blobs

    def forward(self, bottoms, params):
        x = bottoms[0]
        x = x.reshape(*x.shape[: self.axis], self.inputs)
        bias = params[1] if len(params) > 1 else None
        if self.transpose:
            y = x @ params[0]
            return [y + bias if bias is not None else y]
        return [linear(x, params[0], bias)]


class Dropout(Layer):
    """TRAIN: x * mask / (1 - ratio) with keep probability 1 - ratio; TEST: identity."""

    type = "Dropout"
    stochastic = True

    def setup(self, bottom_shapes):
        self.check_bottoms(bottom_shapes, 1)
        self.ratio = self.param.dropout_param.dropout_ratio
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio {self.ratio} must be in [0, 1)")
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        if self.phase != "TRAIN" or self.ratio == 0.0 or x.is_meta:
            return [x]
        keep = 1.0 - self.ratio
        mask = torch.rand(x.shape, device=x.device, generator=self.generator) < keep  # 3x faster than bernoulli_ on CPU
        return [x.mul(mask).mul_(1.0 / keep)]


class Softmax(Layer):
    """Softmax along ``axis`` (default 1)."""

    type = "Softmax"

    def setup(self, bottom_shapes):
        self.check_bottoms(bottom_shapes, 1)
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]), self)
        return []

    def forward(self, bottoms, params):
        return [F.softmax(bottoms[0], dim=self.axis)]


class Sigmoid(Layer):
    """1 / (1 + exp(-x))."""

    type = "Sigmoid"

    def setup(self, bottom_shapes):
        self.check_bottoms(bottom_shapes, 1)
        return []

    def forward(self, bottoms, params):
        return [torch.sigmoid(bottoms[0])]


class SigmoidCrossEntropyLoss(Layer):
    """Sum of max(x,0) - x t + log(1 + exp(-|x|)) over non-ignored entries, divided by the normalizer.

    Without ``normalization`` or ``normalize`` the normalizer is BATCH_SIZE (the first dimension), as
    Caffe 1.0; ``normalize: true`` means VALID, ``false`` BATCH_SIZE; never below 1.
    """

    type = "SigmoidCrossEntropyLoss"

    def setup(self, bottom_shapes):
        self.check_bottoms(bottom_shapes, 2)
        logits, targets = bottom_shapes
        if math.prod(logits) != math.prod(targets):
            raise self.error(f"the logits {logits} and targets {targets} must have the same count")
        p = self.param.loss_param
        if p.HasField("normalization"):
            self.normalization = caffe_pb2.LossParameter.NormalizationMode.Name(p.normalization)
        elif p.HasField("normalize"):
            self.normalization = "VALID" if p.normalize else "BATCH_SIZE"
        else:
            self.normalization = "BATCH_SIZE"
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        return []

    def forward(self, bottoms, params):
        x, target = bottoms
        target = target.reshape(x.shape)
        weight = None
        if self.ignore_label is not None:
            weight = (target.to(torch.int64) != self.ignore_label).to(x.dtype)
        total = F.binary_cross_entropy_with_logits(x, target, weight, reduction="sum")
        return [total / self._normalizer(x, weight)]

    def _normalizer(self, x: torch.Tensor, weight: torch.Tensor | None) -> float | torch.Tensor:
        if self.normalization == "FULL" or (self.normalization == "VALID" and weight is None):
            return float(max(x.numel(), 1))
        if self.normalization == "VALID":
            return weight.sum().clamp(min=1.0)
        if self.normalization == "BATCH_SIZE":
            return float(max(x.shape[0], 1))
        return 1.0


class Concat(Layer):
    """Concatenation along ``axis`` (or the legacy ``concat_dim``)."""

    type = "Concat"

    def setup(self, bottom_shapes):
        self.check_bottoms(bottom_shapes, (1, 1 << 30))
        p = self.param.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        self.axis = canonical_axis(axis, len(bottom_shapes[0]), self)
        return []

    def forward(self, bottoms, params):
        return [torch.cat(list(bottoms), dim=self.axis)]


class Flatten(Layer):
    """Collapse the axes ``axis`` through ``end_axis`` into one."""

    type = "Flatten"

    def setup(self, bottom_shapes):
        self.check_bottoms(bottom_shapes, 1)
        p = self.param.flatten_param
        rank = len(bottom_shapes[0])
        self.start = canonical_axis(p.axis, rank, self)
        self.end = canonical_axis(p.end_axis, rank, self)
        return []

    def forward(self, bottoms, params):
        return [torch.flatten(bottoms[0], self.start, self.end)]


class Reshape(Layer):
    """Replace the axes [axis, axis + num_axes) by ``shape`` (0 copies the bottom's dimension, -1 is inferred)."""

    type = "Reshape"

    def setup(self, bottom_shapes):
        self.check_bottoms(bottom_shapes, 1)
        p = self.param.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        if sum(d == -1 for d in self.dims) > 1:
            raise self.error("at most one dimension of the new shape may be -1")
        self.axis, self.num_axes = p.axis, p.num_axes
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        rank = x.dim()
        start = self.axis if self.axis >= 0 else rank + self.axis + 1
        if not 0 <= start <= rank:
            raise self.error(f"axis {self.axis} is out of range for a blob with {rank} axes")
        end = rank if self.num_axes == -1 else start + self.num_axes
        if not start <= end <= rank:
            raise self.error(f"num_axes {self.num_axes} reaches past the bottom's {rank} axes")
        middle = []
        for index, dim in enumerate(self.dims):
            if dim == 0:
                if start + index >= rank:
                    raise self.error(f"dimension {index} is 0 (copy) but the bottom has no axis {start + index}")
                dim = x.shape[start + index]
            middle.append(dim)
        shape = [*x.shape[:start], *middle, *x.shape[end:]]
        if -1 in shape:
            known = math.prod(d for d in shape if d != -1)
            if known == 0 or x.numel() % known:
                raise self.error(f"cannot infer the -1 dimension: {x.numel()} values into {shape}")
            shape[shape.index(-1)] = x.numel() // known
        if math.prod(shape) != x.numel():
            raise self.error(f"a bottom of shape {tuple(x.shape)} cannot take the shape {tuple(shape)}")
        return [x.reshape(shape)]


class Split(Layer):
    """Every top is the bottom."""

    type = "Split"

    def setup(self, bottom_shapes):
        self.check_bottoms(bottom_shapes, 1)
        return []

    def forward(self, bottoms, params):
        return [bottoms[0]] * len(self.param.top)


class Silence(Layer):
    """Consumes its bottoms; no tops."""

    type = "Silence"

    def forward(self, bottoms, params):
        return []


LAYERS: dict[str, type[Layer]] = {
    cls.type: cls
    for cls in (Input, Convolution, Pooling, ReLU, InnerProduct, Dropout, Softmax, Sigmoid,
                SigmoidCrossEntropyLoss, Concat, Flatten, Reshape, Split, Silence)
}
