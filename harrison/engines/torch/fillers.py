"""Caffe's weight fillers on torch tensors (caffe-facts.md, "Fillers").

Values are drawn on the CPU from a seeded ``torch.Generator`` and then moved to the device, so a
seed gives the same weights on CPU and CUDA. The fan of a blob follows Caffe's legacy-shape rule:
fan_in = count / num and fan_out = count / channels, where num and channels are the first two axes
(1 where the blob has fewer axes).
"""
from __future__ import annotations

import math

import torch

from harrison.errors import HarrisonError
from harrison.proto import caffe_pb2

FILLER_TYPES = ("constant", "gaussian", "uniform", "xavier", "msra")


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a blob as Caffe computes them."""
    count = math.prod(shape)
    num = shape[0] if len(shape) > 0 else 1
    channels = shape[1] if len(shape) > 1 else 1
    return count // max(num, 1), count // max(channels, 1)


def _scale_fan(filler: caffe_pb2.FillerParameter, shape: tuple[int, ...]) -> float:
    fan_in, fan_out = fans(shape)
    norm = caffe_pb2.FillerParameter.VarianceNorm.Name(filler.variance_norm)
    return {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2.0}[norm]


def fill(filler: caffe_pb2.FillerParameter, shape: tuple[int, ...], generator: torch.Generator, where: str = "") -> torch.Tensor:
    """A float32 CPU tensor of ``shape`` filled as Caffe's ``filler`` would fill it.

    ``where`` names the layer and blob for error messages.
    """
    out = torch.empty(shape, dtype=torch.float32)
    kind = filler.type
    if kind == "constant":
        return out.fill_(filler.value)
    if kind == "gaussian":
        out.normal_(filler.mean, filler.std, generator=generator)
        if filler.sparse >= 0:
            if len(shape) < 1:
                raise HarrisonError(f"{where}: a sparse gaussian filler needs a blob with at least one axis")
            keep = torch.empty(shape).bernoulli_(filler.sparse / shape[0], generator=generator)
            out.mul_(keep)
        return out
    if kind == "uniform":
        return out.uniform_(filler.min, filler.max, generator=generator)
    if kind == "xavier":
        bound = math.sqrt(3.0 / _scale_fan(filler, shape))
        return out.uniform_(-bound, bound, generator=generator)
    if kind == "msra":
        return out.normal_(0.0, math.sqrt(2.0 / _scale_fan(filler, shape)), generator=generator)
    raise HarrisonError(
        f"{where}: filler type {kind!r} is not supported by the torch engine; use one of {', '.join(FILLER_TYPES)}"
    )
