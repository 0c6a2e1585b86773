"""InnerProduct's matrix products on oneDNN where the CPU build of torch has it.

``F.linear`` sends float32 products on CPU to MKL's SGEMM, which takes a generic code path on some
CPUs (AMD EPYC among them); oneDNN dispatches on the instruction set and ran the classifier's
products 1.2 to 1.8 times faster here (bench/RESULTS.md). The values differ from F.linear's only by
rounding order. The gradients are written out in Function.backward because torch's oneDNN linear
has no autograd formula of its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harrison.engines.torch.onednn import onednn_op


ONEDNN_LINEAR = onednn_op("_linear_pointwise")
"""oneDNN's linear operation (input, weight, bias, post-op...), where this build of torch has it."""


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x weight^T + bias for 2-D x and weight (views with any strides)."""
    return ONEDNN_LINEAR(x, weight, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """y = x W^T + b with its three gradients, each a oneDNN product (or a sum for the bias)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _product(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
        grad_weight = _product(grad.t(), x.t(), None) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for N x K x and M x K weight, on oneDNN for float32 CPU tensors."""
    fast = (ONEDNN_LINEAR is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.dim() == 2 and not x.is_meta)
    if not fast:
        return F.linear(x, weight, bias)
    return _OneDnnLinear.apply(x, weight, bias)
