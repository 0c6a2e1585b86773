"""Image decoding (Pillow) and the VGG input recipe of pycaffe, with prefetching for extraction.

The recipe is ``caffe.io.load_image`` followed by ``caffe.io.Transformer.preprocess`` as the VGG and Places
models use it: RGB in [0, 1] -> resize to the net's input -> HWC to CHW -> RGB to BGR -> x raw_scale -> minus
the mean. The resize reproduces ``caffe.io.resize_image`` (scikit-image's ``resize`` with ``order=1``,
``mode='constant'``): a Gaussian anti-aliasing filter of sigma (factor - 1) / 2 on each shrunk axis
(truncated at 4 sigma, zero padding) followed by bilinear interpolation at pixel centres, where samples
outside the image are blended with zero; pycaffe rescales the image to [0, 1] by its own minimum and maximum
first, so "zero" is the image's minimum. Both steps are linear and separable, so they are applied here as one
band of weights per axis.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import yaml
from PIL import Image, ImageOps, UnidentifiedImageError

from harrison.errors import HarrisonError

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_PIXEL_LIMIT_LOCK = threading.Lock()


class ImageError(HarrisonError):
    """An image that cannot be decoded: ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    """How a feature net wants its input (read from the ``preprocess.yaml`` next to the net)."""

    input_blob: str
    input_size: tuple[int, int]
    """(height, width) of the net's input."""
    raw_scale: float
    mean: np.ndarray = dataclasses.field(compare=False, repr=False)
    """BGR mean: shape (3, 1, 1) for a triple, (3, height, width) for a mean file fitted to the input."""
    feature_blob: str = "fc7"
    source: str = ""
    """The YAML file the spec came from."""


def load_rgb(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file as an H x W x 3 float32 RGB array in [0, 1], as ``caffe.io.load_image`` returns.

    Grayscale is repeated over the channels; palette, CMYK and other modes are converted to RGB by Pillow;
    an alpha channel is dropped (as pycaffe does); 16-bit grayscale is divided by 65,535; the EXIF
    orientation is applied. A missing, unreadable or truncated file raises ``ImageError``.

    A photo that Pillow refuses as a decompression bomb (over twice ``Image.MAX_IMAGE_PIXELS``) is still
    decoded, with the limit lifted for that decode only: a JPEG in draft mode at the smallest scale that
    stays at least ``size`` (the net's (height, width)) on each side, anything else at full size. Every
    other image is decoded at full size, as pycaffe does.
    """
    try:
        image = _decode(path, size)
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc)
        if "truncated" in reason.lower():
            reason = f"truncated image data ({reason})"
        raise ImageError(path, reason) from None
    if image.mode in SIXTEEN_BIT_MODES:
        gray = np.asarray(image, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(gray, 0.0, 1.0)[:, :, None], 3, axis=2)
    if image.mode == "F":
        gray = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.float32) * np.float32(1.0 / 255.0)


def _decode(path: str | os.PathLike, size: tuple[int, int] | None) -> Image.Image:
    """Open, load and EXIF-orient ``path``; a decompression bomb as ``load_rgb`` describes.

    Pillow's pixel limit is a module global and decoding runs on threads, so every open holds
    ``_PIXEL_LIMIT_LOCK``: no other open sees the limit while it is lifted for one large photo.
    """
    with _PIXEL_LIMIT_LOCK:
        try:
            image = Image.open(path)
        except Image.DecompressionBombError:
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as image:
                    if image.format == "JPEG" and size is not None:
                        side = max(size)  # either orientation once EXIF turns it
                        image.draft(None, (side, side))
                    image.load()
                    return ImageOps.exif_transpose(image)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    with image:
        image.load()
        return ImageOps.exif_transpose(image)


@functools.lru_cache(maxsize=64)
def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """How skimage's resize maps one axis of length ``n_in`` to ``n_out``, as a band of weights.

    The linear map (Gaussian anti-aliasing, then bilinear sampling at pixel centres) is an (n_out, n_in)
    matrix with few non-zeros per row; it is returned as ``starts`` (n_out) and ``band`` (n_out, width):
    output ``o`` is the sum over ``t`` of ``band[o, t] * input[starts[o] + t]``.
    """
    factor = n_in / n_out
    sigma = max(0.0, (factor - 1.0) / 2.0)
    blur = np.eye(n_in)
    if sigma > 1e-15:
        radius = int(4.0 * sigma + 0.5)
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps /= taps.sum()
        blur = np.zeros((n_in, n_in))
        for offset, weight in zip(range(-radius, radius + 1), taps):
            blur += np.eye(n_in, k=offset) * weight
    coords = factor * (np.arange(n_out) + 0.5) - 0.5
    low = np.floor(coords).astype(np.int64)
    frac = coords - low
    sample = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for index, weight in ((low, 1.0 - frac), (low + 1, frac)):
        inside = (index >= 0) & (index < n_in)
        np.add.at(sample, (rows[inside], index[inside]), weight[inside])
    matrix = sample @ blur
    used = matrix != 0
    first = np.where(used.any(axis=1), used.argmax(axis=1), 0)
    last = np.where(used.any(axis=1), n_in - 1 - used[:, ::-1].argmax(axis=1), 0)
    width = int((last - first).max()) + 1
    starts = np.clip(first, 0, n_in - width)
    band = matrix[rows[:, None], starts[:, None] + np.arange(width)]
    return starts, band.astype(np.float32)


def _resize_axis0(image: np.ndarray, n_out: int) -> np.ndarray:
    starts, band = _axis_weights(image.shape[0], n_out)
    out = np.zeros((n_out, *image.shape[1:]), dtype=np.float32)
    for t in range(band.shape[1]):
        out += band[:, t, None, None] * image[starts + t]
    return out


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an H x W x C float image to ``size`` (height, width) as ``caffe.io.resize_image`` does."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image.astype(np.float32, copy=False)
    low = np.float32(image.min())
    shifted = image.astype(np.float32) - low
    rows = _resize_axis0(shifted, height)
    out = _resize_axis0(np.ascontiguousarray(rows.transpose(1, 0, 2)), width).transpose(1, 0, 2)
    return out + low


def preprocess(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """An RGB image in [0, 1] (H x W x 3) as the net's C x H x W float32 input."""
    resized = resize(rgb, spec.input_size)
    bgr = resized.transpose(2, 0, 1)[::-1]
    return np.ascontiguousarray(bgr * np.float32(spec.raw_scale) - spec.mean, dtype=np.float32)


def load_preprocess_spec(path: str | os.PathLike) -> PreprocessSpec:
    """Read a ``preprocess.yaml``: input_blob, input_size, raw_scale, feature_blob, and mean_bgr or mean_file.

    ``mean_file`` (a .binaryproto, relative to the YAML's folder) is fitted to the input as pycaffe's
    ``Transformer.set_mean`` does (resized), or centre-cropped as Caffe's Data layer does with
    ``mean_fit: crop``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarrisonError(f"{path}: preprocess spec not found; it belongs next to the feature net") from None
    if not isinstance(data, dict):
        raise HarrisonError(f"{path}: a preprocess spec is a YAML mapping; see prototxt/demo/vgg_object/preprocess.yaml")
    missing = [key for key in ("input_blob", "input_size", "feature_blob") if key not in data]
    if missing or ("mean_bgr" in data) == ("mean_file" in data):
        what = ", ".join(missing) if missing else "exactly one of mean_bgr or mean_file"
        raise HarrisonError(f"{path}: missing {what}; see prototxt/demo/vgg_object/preprocess.yaml")
    size = data["input_size"]
    size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
    if "mean_bgr" in data:
        mean = np.asarray(data["mean_bgr"], dtype=np.float32).reshape(3, 1, 1)
    else:
        mean = _fit_mean(path.parent / data["mean_file"], size, data.get("mean_fit", "resize"), path)
    return PreprocessSpec(
        input_blob=str(data["input_blob"]),
        input_size=size,
        raw_scale=float(data.get("raw_scale", 255.0)),
        mean=mean,
        feature_blob=str(data["feature_blob"]),
        source=str(path),
    )


def _fit_mean(mean_file: Path, size: tuple[int, int], fit: str, spec_path: Path) -> np.ndarray:
    from harrison.proto.io import read_binaryproto_mean

    mean = np.asarray(read_binaryproto_mean(mean_file), dtype=np.float32)
    mean = mean.reshape(mean.shape[-3:])
    if mean.shape[1:] == size:
        return mean
    if fit == "crop":
        top, left = (mean.shape[1] - size[0]) // 2, (mean.shape[2] - size[1]) // 2
        if top < 0 or left < 0:
            raise HarrisonError(f"{spec_path}: mean_file {mean_file} is smaller than the input {size}; use mean_fit: resize")
        return np.ascontiguousarray(mean[:, top : top + size[0], left : left + size[1]])
    if fit != "resize":
        raise HarrisonError(f"{spec_path}: mean_fit must be 'resize' or 'crop', not {fit!r}")
    return np.ascontiguousarray(resize(mean.transpose(1, 2, 0), size).transpose(2, 0, 1))


@dataclasses.dataclass
class Batch:
    """Consecutive images ``start`` .. ``start + len(data)`` of a list, preprocessed."""

    start: int
    data: np.ndarray
    """B x 3 x H x W float32; rows of bad images are zero."""
    bad: list[ImageError]
    bad_rows: list[int]
    """Row numbers (within the batch) of the images in ``bad``."""


def _load_one(path: str, spec: PreprocessSpec) -> np.ndarray | ImageError:
    try:
        return preprocess(load_rgb(path, spec.input_size), spec)
    except ImageError as exc:
        return exc


def load_batches(
    paths: Sequence[str | os.PathLike],
    spec: PreprocessSpec,
    batch_size: int,
    *,
    start: int = 0,
    stop: int | None = None,
    workers: int | None = None,
) -> Iterator[Batch]:
    """Yield preprocessed batches of ``paths[start:stop]``, decoding ahead on a thread pool.

    Decoding and resizing release the GIL, so ``workers`` threads (default: the CPU count, at most 16) keep
    about two batches ready while the caller runs the net on the current one. Bad images do not stop the
    iteration: they come back in ``Batch.bad`` with zero rows.
    """
    stop = len(paths) if stop is None else stop
    workers = workers or min(16, os.cpu_count() or 1)
    shape = (3, *spec.input_size)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        next_index = start
        for batch_start in range(start, stop, batch_size):
            batch_stop = min(batch_start + batch_size, stop)
            while next_index < min(stop, batch_stop + 2 * batch_size):
                pending.append(pool.submit(_load_one, str(paths[next_index]), spec))
                next_index += 1
            data = np.zeros((batch_stop - batch_start, *shape), dtype=np.float32)
            bad: list[ImageError] = []
            bad_rows: list[int] = []
            for row in range(batch_stop - batch_start):
                result = pending.popleft().result()
                if isinstance(result, ImageError):
                    bad.append(result)
                    bad_rows.append(row)
                else:
                    data[row] = result
            yield Batch(batch_start, data, bad, bad_rows)
