"""The torch engine's layers and fillers against hand-computed values and numpy references of Caffe's loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from harrison.engines.torch.fillers import fans, fill
from harrison.engines.torch.layers import LAYERS, caffe_pooled_size
from harrison.engines.torch.linear import linear
from harrison.errors import HarrisonError
from harrison.proto import caffe_pb2


def make(text: str, *shapes: tuple[int, ...], phase: str = "TEST"):
    """A layer from LayerParameter text, set up for bottoms of ``shapes``, and its parameter blobs."""
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    if not param.top and param.type != "Silence":
        param.top.append("top")
    layer = LAYERS[param.type](param, phase)
    return layer, layer.setup(list(shapes))


def run(layer, *bottoms, params=()):
    tensors = [torch.as_tensor(np.asarray(b, dtype=np.float32)) for b in bottoms]
    params = [torch.as_tensor(np.asarray(p, dtype=np.float32)) for p in params]
    return [top.detach().numpy() for top in layer.forward(tensors, params)]


# ---- pooling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size, kernel, stride, pad, expected", [
    (224, 2, 2, 0, 112),
    (6, 2, 2, 0, 3),
    (7, 2, 2, 0, 4),   # ceil keeps the partial last window (floor would give 3)
    (7, 3, 2, 1, 4),
    (13, 3, 2, 1, 7),
    (5, 2, 2, 1, 3),   # ceil gives 4, but that window would start in the padding: dropped
    (5, 3, 2, 2, 4),
])
def test_pooled_size_follows_caffe(size, kernel, stride, pad, expected):
    assert caffe_pooled_size(size, kernel, stride, pad, ceil=True) == expected


def caffe_pool(x: np.ndarray, method: str, kernel, stride, pad) -> np.ndarray:
    """Caffe's PoolingLayer::Forward_cpu loops (MAX and AVE) in numpy float64."""
    n, c, height, width = x.shape
    out_h = caffe_pooled_size(height, kernel[0], stride[0], pad[0], True)
    out_w = caffe_pooled_size(width, kernel[1], stride[1], pad[1], True)
    out = np.empty((n, c, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            h0, w0 = i * stride[0] - pad[0], j * stride[1] - pad[1]
            h1, w1 = min(h0 + kernel[0], height + pad[0]), min(w0 + kernel[1], width + pad[1])
            size = (h1 - h0) * (w1 - w0)
            window = x[:, :, max(h0, 0):min(h1, height), max(w0, 0):min(w1, width)]
            out[:, :, i, j] = window.max(axis=(2, 3)) if method == "MAX" else window.sum(axis=(2, 3)) / size
    return out


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape, kernel, stride, pad", [
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0)),
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1)),
    ((1, 2, 13, 11), (3, 2), (2, 3), (1, 0)),
    ((1, 2, 5, 6), (2, 2), (2, 2), (1, 1)),
    ((1, 2, 5, 7), (3, 3), (2, 2), (2, 2)),   # pad above half the kernel: explicit padding path
    ((1, 1, 9, 9), (5, 5), (3, 3), (3, 4)),
])
def test_pooling_matches_caffe_loops(method, shape, kernel, stride, pad):
    text = (f'name: "pool" type: "Pooling" pooling_param {{ pool: {method} kernel_h: {kernel[0]} kernel_w: {kernel[1]} '
            f'stride_h: {stride[0]} stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} }}')
    layer, _ = make(text, shape)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    (got,) = run(layer, x)
    np.testing.assert_allclose(got, caffe_pool(x.astype(np.float64), method, kernel, stride, pad), rtol=1e-6, atol=1e-6)


def test_average_pooling_counts_padding_inside_the_padded_bounds():
    layer, _ = make('name: "p" type: "Pooling" pooling_param { pool: AVE kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 }', (1, 1, 6, 1))
    (got,) = run(layer, np.arange(6.0).reshape(1, 1, 6, 1))
    # windows [-1,2) [1,4) [3,6) [5,7): divisors 3, 3, 3 and 2 (the last window stops at the padded edge)
    np.testing.assert_allclose(got.ravel(), [1 / 3, 2.0, 4.0, 2.5], rtol=1e-6)


def test_global_pooling_and_refusals():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)
    layer, _ = make('name: "g" type: "Pooling" pooling_param { pool: AVE global_pooling: true }', x.shape)
    np.testing.assert_allclose(run(layer, x)[0][..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-5)
    layer, _ = make('name: "g" type: "Pooling" pooling_param { pool: MAX global_pooling: true }', x.shape)
    np.testing.assert_array_equal(run(layer, x)[0][..., 0, 0], x.max(axis=(2, 3)))
    with pytest.raises(HarrisonError, match="'s1' \\(Pooling\\).*STOCHASTIC"):
        make('name: "s1" type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 }', x.shape)
    with pytest.raises(HarrisonError, match="both stride_h and stride_w"):
        make('name: "p" type: "Pooling" pooling_param { kernel_size: 2 stride_h: 2 }', x.shape)
    with pytest.raises(HarrisonError, match="smaller than the kernel"):
        make('name: "p" type: "Pooling" pooling_param { kernel_size: 2 pad: 2 }', x.shape)


# ---- convolution and inner product ------------------------------------------------------------

def conv_reference(x, w, b, stride, pad, dilation, group):
    """Direct convolution in float64, summing one kernel tap at a time."""
    n, channels, height, width = x.shape
    out_channels, per_group, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (height + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (width + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    out = np.zeros((n, out_channels, oh, ow))
    per_out = out_channels // group
    for g in range(group):
        for i in range(kh):
            for j in range(kw):
                top, left = i * dilation[0], j * dilation[1]
                patch = xp[:, g * per_group:(g + 1) * per_group,
                           top:top + stride[0] * (oh - 1) + 1:stride[0], left:left + stride[1] * (ow - 1) + 1:stride[1]]
                out[:, g * per_out:(g + 1) * per_out] += np.einsum("nchw,oc->nohw", patch, w[g * per_out:(g + 1) * per_out, :, i, j])
    return out + (b.reshape(1, -1, 1, 1) if b is not None else 0)


@pytest.mark.parametrize("settings, stride, pad, dilation, group, kernel", [
    ("kernel_size: 3 pad: 1", (1, 1), (1, 1), (1, 1), 1, (3, 3)),
    ("kernel_size: 3 stride: 2", (2, 2), (0, 0), (1, 1), 1, (3, 3)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 0 group: 2", (2, 1), (2, 0), (1, 1), 2, (3, 2)),
    ("kernel_size: 3 kernel_size: 1 pad: 0 pad: 1 dilation: 2 group: 2", (1, 1), (0, 1), (2, 2), 2, (3, 1)),
])
def test_convolution_matches_direct_sum(settings, stride, pad, dilation, group, kernel):
    shape = (2, 4, 9, 8)
    layer, blobs = make(f'name: "c" type: "Convolution" convolution_param {{ num_output: 6 {settings} }}', shape)
    assert [b.shape for b in blobs] == [(6, 4 // group, *kernel), (6,)]
    rng = np.random.default_rng(2)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in (shape, blobs[0].shape, (6,)))
    (got,) = run(layer, x, params=[w, b])
    np.testing.assert_allclose(got, conv_reference(x.astype(np.float64), w, b, stride, pad, dilation, group), rtol=1e-4, atol=1e-4)


def test_convolution_without_bias_and_bad_group():
    layer, blobs = make('name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 bias_term: false }', (1, 3, 2, 2))
    assert [b.shape for b in blobs] == [(2, 3, 1, 1)]
    with pytest.raises(HarrisonError, match="'c' \\(Convolution\\).*group"):
        make('name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 group: 2 }', (1, 3, 2, 2))


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_axis_and_transpose(transpose):
    shape = (2, 3, 4, 5)
    text = f'name: "ip" type: "InnerProduct" inner_product_param {{ num_output: 7 axis: 2 transpose: {str(transpose).lower()} }}'
    layer, blobs = make(text, shape)
    assert blobs[0].shape == ((20, 7) if transpose else (7, 20)) and blobs[1].shape == (7,)
    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in (shape, blobs[0].shape, (7,)))
    (got,) = run(layer, x, params=[w, b])
    weight = w if transpose else w.T
    np.testing.assert_allclose(got, x.reshape(2, 3, 20) @ weight + b, rtol=1e-5, atol=1e-5)
    assert layer.top_shapes([shape], [blobs[0].shape, (7,)]) == [(2, 3, 7)]



@pytest.mark.parametrize("bias", [True, False])
def test_linear_products_and_gradients_equal_torch_linear(bias):
    """The oneDNN path of InnerProduct (2-D float32 on CPU) gives F.linear's values and gradients."""
    generator = torch.Generator().manual_seed(5)
    x, w, b, g = (torch.randn(s, generator=generator) for s in ((6, 40), (9, 40), (9,), (6, 9)))
    grads = []
    for fn in (linear, torch.nn.functional.linear):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        y = fn(leaves[0], leaves[1], leaves[2] if bias else None)
        (y * g).sum().backward()
        grads.append([y.detach()] + [t.grad for t in leaves[: 3 if bias else 2]])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, None), x @ w.T, rtol=1e-5, atol=1e-5)


# ---- element-wise and shape layers -------------------------------------------------------------

def test_relu_softmax_sigmoid():
    x = np.random.default_rng(4).standard_normal((3, 5, 2)).astype(np.float32)
    layer, _ = make('name: "r" type: "ReLU" relu_param { negative_slope: 0.1 }', x.shape)
    np.testing.assert_allclose(run(layer, x)[0], np.maximum(x, 0) + 0.1 * np.minimum(x, 0), rtol=1e-6)
    layer, _ = make('name: "r" type: "ReLU"', x.shape)
    np.testing.assert_array_equal(run(layer, x)[0], np.maximum(x, 0))
    layer, _ = make('name: "s" type: "Softmax" softmax_param { axis: -1 }', x.shape)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(run(layer, x)[0], e / e.sum(axis=-1, keepdims=True), rtol=1e-5)
    layer, _ = make('name: "s" type: "Sigmoid"', x.shape)
    np.testing.assert_allclose(run(layer, x)[0], 1 / (1 + np.exp(-x)), rtol=1e-5)


def test_dropout_scales_kept_units_at_train_and_passes_at_test():
    x = np.ones((200, 500), dtype=np.float32)
    layer, _ = make('name: "d" type: "Dropout" dropout_param { dropout_ratio: 0.3 }', x.shape, phase="TRAIN")
    layer.generator = torch.Generator().manual_seed(5)
    (got,) = run(layer, x)
    assert set(np.unique(got)) == {0.0, np.float32(1 / 0.7)}
    assert abs((got > 0).mean() - 0.7) < 0.01
    layer.generator = torch.Generator().manual_seed(5)
    np.testing.assert_array_equal(run(layer, x)[0], got)
    test_layer, _ = make('name: "d" type: "Dropout" dropout_param { dropout_ratio: 0.3 }', x.shape, phase="TEST")
    np.testing.assert_array_equal(run(test_layer, x)[0], x)


def test_concat_flatten_reshape_split_silence():
    a, b = np.zeros((2, 3, 4), np.float32), np.ones((2, 5, 4), np.float32)
    layer, _ = make('name: "c" type: "Concat" concat_param { axis: 1 }', a.shape, b.shape)
    assert run(layer, a, b)[0].shape == (2, 8, 4)
    layer, _ = make('name: "c" type: "Concat" concat_param { concat_dim: 2 }', a.shape, a.shape)
    assert run(layer, a, a)[0].shape == (2, 3, 8)
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    layer, _ = make('name: "f" type: "Flatten"', x.shape)
    assert run(layer, x)[0].shape == (2, 60)
    layer, _ = make('name: "f" type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', x.shape)
    assert run(layer, x)[0].shape == (2, 12, 5)
    for dims, axis, num_axes, expected in [
        ("dim: 0 dim: -1", 0, -1, (2, 60)),
        ("dim: 0 dim: 2 dim: -1 dim: 0", 0, -1, (2, 2, 6, 5)),
        ("dim: 2 dim: 2", 1, 1, None),
        ("dim: 1", 4, 0, (2, 3, 4, 5, 1)),
        ("dim: 1", -1, 0, (2, 3, 4, 5, 1)),
        ("dim: -1", 1, 2, (2, 12, 5)),
    ]:
        layer, _ = make(f'name: "r" type: "Reshape" reshape_param {{ shape {{ {dims} }} axis: {axis} num_axes: {num_axes} }}', x.shape)
        if expected is None:
            with pytest.raises(HarrisonError, match="'r' \\(Reshape\\)"):
                run(layer, x)
        else:
            got = run(layer, x)[0]
            assert got.shape == expected
            np.testing.assert_array_equal(got.ravel(), x.ravel())
    layer, _ = make('name: "s" type: "Split" top: "a" top: "b"', x.shape)
    assert [t.shape for t in run(layer, x)] == [x.shape, x.shape]
    layer, _ = make('name: "s" type: "Silence"', x.shape)
    assert run(layer, x) == []


# ---- sigmoid cross-entropy loss ---------------------------------------------------------------

def bce(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def test_fresh_multilabel_loss_is_classes_times_log2():
    layer, _ = make('name: "loss" type: "SigmoidCrossEntropyLoss"', (100, 1000), (100, 1000))
    labels = (np.random.default_rng(6).random((100, 1000)) < 0.01).astype(np.float32)
    (loss,) = run(layer, np.zeros((100, 1000)), labels)
    assert loss.shape == ()
    assert loss == pytest.approx(1000 * math.log(2), rel=1e-6)  # 693.147: summed over classes, divided by N


@pytest.mark.parametrize("setting, normalizer", [
    ("", 4.0),
    ("loss_param { normalization: BATCH_SIZE }", 4.0),
    ("loss_param { normalization: FULL }", 24.0),
    ("loss_param { normalization: VALID }", 24.0),
    ("loss_param { normalization: NONE }", 1.0),
    ("loss_param { normalize: true }", 24.0),
    ("loss_param { normalize: false }", 4.0),
])
def test_loss_normalization_modes(setting, normalizer):
    rng = np.random.default_rng(7)
    x, t = rng.standard_normal((4, 6)).astype(np.float32), (rng.random((4, 6)) < 0.5).astype(np.float32)
    layer, _ = make(f'name: "l" type: "SigmoidCrossEntropyLoss" {setting}', x.shape, t.shape)
    assert run(layer, x, t)[0] == pytest.approx(bce(x, t).sum() / normalizer, rel=1e-5)


def test_loss_ignore_label_and_gradient():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    t = (rng.random((5, 3)) < 0.5).astype(np.float32)
    t[0, 0] = t[2, 1] = -1
    layer, _ = make('name: "l" type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 normalization: VALID }', x.shape, t.shape)
    valid = t != -1
    assert run(layer, x, t)[0] == pytest.approx(bce(x, t)[valid].sum() / valid.sum(), rel=1e-5)
    logits = torch.tensor(x, requires_grad=True)
    layer.forward([logits, torch.tensor(t)], [])[0].backward()
    expected = (1 / (1 + np.exp(-x)) - t) * valid / valid.sum()
    np.testing.assert_allclose(logits.grad.numpy(), expected, rtol=1e-5, atol=1e-7)


# ---- fillers ----------------------------------------------------------------------------------

def filler(text: str) -> caffe_pb2.FillerParameter:
    return text_format.Parse(text, caffe_pb2.FillerParameter())


def test_fans_follow_caffe():
    assert fans((64, 3, 3, 3)) == (27, 576)
    assert fans((4096, 25088)) == (25088, 4096)
    assert fans((10,)) == (1, 10)


@pytest.mark.parametrize("text, shape, check", [
    ('type: "constant" value: 0.25', (3, 4), lambda v: np.all(v == 0.25)),
    ("", (3, 4), lambda v: np.all(v == 0)),
    ('type: "uniform" min: -2 max: 3', (200, 300), lambda v: v.min() >= -2 and v.max() < 3 and abs(v.mean() - 0.5) < 0.02),
    ('type: "gaussian" mean: 1 std: 0.5', (200, 300), lambda v: abs(v.mean() - 1) < 0.01 and abs(v.std() - 0.5) < 0.01),
    ('type: "xavier"', (400, 600), lambda v: abs(v).max() <= math.sqrt(3 / 600) and abs(v.std() - math.sqrt(1 / 600)) < 1e-3),
    ('type: "xavier" variance_norm: FAN_OUT', (400, 600), lambda v: abs(v).max() <= math.sqrt(3 / 400)),
    ('type: "xavier" variance_norm: AVERAGE', (400, 600), lambda v: abs(v.std() - math.sqrt(1 / 500)) < 1e-3),
    ('type: "msra"', (256, 64, 3, 3), lambda v: abs(v.std() - math.sqrt(2 / 576)) < 1e-3 and abs(v.mean()) < 1e-3),
    ('type: "msra" variance_norm: FAN_OUT', (64, 256, 3, 3), lambda v: abs(v.std() - math.sqrt(2 / 576)) < 1e-3),
    ('type: "gaussian" std: 1 sparse: 20', (100, 400), lambda v: abs((v != 0).mean() - 0.2) < 0.01),
])
def test_filler_statistics(text, shape, check):
    values = fill(filler(text), shape, torch.Generator().manual_seed(0)).numpy()
    assert values.shape == shape and values.dtype == np.float32
    assert check(values)


def test_fillers_repeat_with_the_seed_and_refuse_unknown_types():
    spec = filler('type: "msra"')
    first = fill(spec, (8, 8), torch.Generator().manual_seed(3))
    assert torch.equal(first, fill(spec, (8, 8), torch.Generator().manual_seed(3)))
    assert not torch.equal(first, fill(spec, (8, 8), torch.Generator().manual_seed(4)))
    with pytest.raises(HarrisonError, match="conv1.*'bilinear'"):
        fill(filler('type: "bilinear"'), (2, 2), torch.Generator(), "conv1 blob 0")
