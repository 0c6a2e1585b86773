"""Caffe's data layers: HDF5Data and Data (LMDB of Datum) (caffe-facts.md, "HDF5Data" and "Data").

Both produce CPU float32 tensors, one batch per forward pass, and keep their place between passes
like Caffe's layers; ``position`` reports that place and ``seek`` moves it on by whole batches
without reading the data. Random choices (HDF5 shuffle, crops, mirrors, rand_skip) come from a
numpy generator seeded by the net, so runs repeat exactly. Relative paths resolve against the
working directory Caffe would run in: the net's ``root`` (the process's working directory by default).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import h5py
import lmdb
import numpy as np
import torch

from harrison.engines.torch.layers import Layer, ParamBlob, Shape
from harrison.proto import caffe_pb2
from harrison.proto.io import read_binaryproto_mean


class DataLayer(Layer):
    """A layer with no bottoms that yields the next batch on each forward pass."""

    def __init__(self, param: caffe_pb2.LayerParameter, phase: str, seed: int = 0, root: Path | None = None) -> None:
        super().__init__(param, phase)
        self.rng = np.random.default_rng(seed)
        self.root = Path.cwd() if root is None else Path(root)
        self.shapes: list[Shape] = []

    def resolve(self, path: str) -> Path:
        """``path`` as Caffe, running in ``root``, would open it."""
        return self.root / path

    def top_shapes(self, bottom_shapes: Sequence[Shape], param_shapes: Sequence[Shape]) -> list[Shape]:
        return list(self.shapes)

    def position(self) -> dict:
        """Where the layer is in its data (JSON-ready)."""
        raise NotImplementedError

    def seek(self, batches: int) -> None:
        """Move on as if ``batches`` forward passes had run."""
        raise NotImplementedError


class HDF5Data(DataLayer):
    """Rows of HDF5 datasets named like the tops, from the files listed in ``source``.

    Caffe 1.0's order: files in list order (permuted each pass with ``shuffle``), rows in file order
    (permuted at each load and each wrap with ``shuffle``); a batch runs across file boundaries and
    wraps around to the first file.
    """

    type = "HDF5Data"

    def setup(self, bottom_shapes: Sequence[Shape]) -> list[ParamBlob]:
        self.check_bottoms(bottom_shapes, 0)
        if self.param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data; remove transform_param")
        if not self.param.top:
            raise self.error("needs at least one top (the dataset names)")
        p = self.param.hdf5_data_param
        if p.batch_size <= 0:
            raise self.error("hdf5_data_param.batch_size must be positive")
        self.batch_size = p.batch_size
        self.shuffle = p.shuffle
        source = self.resolve(p.source)
        try:
            self.files = [str(self.resolve(name)) for name in source.read_text(encoding="utf-8").split()]
        except OSError as exc:
            raise self.error(f"cannot read the source list {source} ({exc.strerror}); relative paths resolve against {self.root}") from exc
        if not self.files:
            raise self.error(f"the source list {source} names no .h5 file; list one path per line")
        self.source = source
        self.file_order = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.file_order)
        self.file_cursor = 0
        self.arrays: list[np.ndarray] | None = None
        self._load(with_data=True)
        self.row = 0
        self.shapes = [(self.batch_size, *array.shape[1:]) for array in self.arrays]
        return []

    def _path(self) -> str:
        return self.files[self.file_order[self.file_cursor]]

    def _open(self, path: str) -> h5py.File:
        try:
            return h5py.File(path, "r")
        except OSError as exc:
            raise self.error(f"cannot open {path!r}, listed in {self.source} ({exc}); fix the path or the file") from exc

    def _datasets(self, handle: h5py.File, path: str) -> list[h5py.Dataset]:
        datasets = []
        for top in self.param.top:
            if top not in handle or not isinstance(handle[top], h5py.Dataset):
                raise self.error(f"{path} has no dataset {top!r} (it has {sorted(handle.keys())}); each top reads the dataset of its name")
            datasets.append(handle[top])
        rows = {dataset.shape[0] if dataset.ndim else 0 for dataset in datasets}
        if len(rows) != 1 or 0 in rows:
            raise self.error(f"{path}: datasets {list(self.param.top)} must share a positive first dimension, they have {[d.shape for d in datasets]}")
        return datasets

    def _load(self, with_data: bool) -> None:
        """Caffe's LoadHDF5FileData: the current file becomes the rows' source; a fresh row order."""
        path = self._path()
        with self._open(path) as handle:
            datasets = self._datasets(handle, path)
            self.rows = datasets[0].shape[0]
            self.arrays = [np.asarray(dataset, dtype=np.float32) for dataset in datasets] if with_data else None
        if self.shapes and with_data:
            shapes = [(self.batch_size, *array.shape[1:]) for array in self.arrays]
            if shapes != self.shapes:
                raise self.error(f"{path}: rows of shape {[s[1:] for s in shapes]} differ from the first file's {[s[1:] for s in self.shapes]}")
        self.row_order = np.arange(self.rows)
        if self.shuffle:
            self.rng.shuffle(self.row_order)

    def _advance(self, count: int, with_data: bool) -> list[list[np.ndarray]]:
        """Take ``count`` rows in Caffe's order; the pieces per file stretch (row arrays per top) when ``with_data``."""
        pieces = []
        while count:
            if self.row == self.rows:
                if len(self.files) > 1:
                    self.file_cursor += 1
                    if self.file_cursor == len(self.files):
                        self.file_cursor = 0
                        if self.shuffle:
                            self.rng.shuffle(self.file_order)
                    self._load(with_data)
                self.row = 0
                if self.shuffle:
                    self.rng.shuffle(self.row_order)
            take = min(count, self.rows - self.row)
            if with_data:
                if self.arrays is None:
                    with self._open(self._path()) as handle:
                        self.arrays = [np.asarray(d, dtype=np.float32) for d in self._datasets(handle, self._path())]
                rows = self.row_order[self.row:self.row + take]
                pieces.append([array[rows] for array in self.arrays])
            self.row += take
            count -= take
        return pieces

    def forward(self, bottoms, params):
        pieces = self._advance(self.batch_size, with_data=True)
        return [torch.from_numpy(np.concatenate([piece[j] for piece in pieces])) for j in range(len(self.param.top))]

    def position(self) -> dict:
        return {"file": self._path(), "file_cursor": self.file_cursor, "row": int(self.row)}

    def seek(self, batches: int) -> None:
        self._advance(batches * self.batch_size, with_data=False)


_LMDB_ENVIRONMENTS: dict[Path, lmdb.Environment] = {}


def _open_lmdb(path: Path) -> lmdb.Environment:
    """One read-only environment per database for the process (py-lmdb refuses to open one twice,
    and a TRAIN and a TEST net often read the same database)."""

    path = path.resolve()
    if path not in _LMDB_ENVIRONMENTS:
        _LMDB_ENVIRONMENTS[path] = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True)
    return _LMDB_ENVIRONMENTS[path]


class Data(DataLayer):
    """Datum records from an LMDB (convert_imageset's layout), transformed as Caffe's DataTransformer.

    Per image: crop (centred at TEST, random at TRAIN), subtract mean_file (at the uncropped
    position) or mean_value, multiply by scale, mirror at random when ``mirror`` is set. Records are
    read in key order and wrap around at the end. Tops: data, and label when a second top is named.
    """

    type = "Data"

    def setup(self, bottom_shapes: Sequence[Shape]) -> list[ParamBlob]:

        self.check_bottoms(bottom_shapes, 0)
        if len(self.param.top) not in (1, 2):
            raise self.error("takes one top (data) or two (data, label)")
        p = self.param.data_param
        backend = caffe_pb2.DataParameter.DB.Name(p.backend)
        if backend != "LMDB":
            raise self.error(f"backend {backend} is not supported by the torch engine (Caffe's default is LEVELDB); "
                             "convert the data to LMDB and set `backend: LMDB`")
        if p.batch_size <= 0:
            raise self.error("data_param.batch_size must be positive")
        self.batch_size = p.batch_size
        try:
            self.env = _open_lmdb(self.resolve(p.source))
        except lmdb.Error as exc:
            raise self.error(f"cannot open the LMDB {p.source!r} ({exc}); relative paths resolve against {self.root}") from exc
        self.txn = self.env.begin(buffers=False)
        self.cursor = self.txn.cursor()
        if not self.cursor.first():
            raise self.error(f"the LMDB {p.source!r} holds no records")
        self.consumed = 0
        if p.rand_skip:
            self.seek_records(int(self.rng.integers(p.rand_skip)))
        first, _ = self._decode(self.cursor.key(), self.cursor.value())
        self.image_shape = first.shape
        self._setup_transform(first.shape)
        channels, height, width = first.shape
        crop = self.crop
        self.shapes = [(self.batch_size, channels, crop or height, crop or width)]
        if len(self.param.top) == 2:
            self.shapes.append((self.batch_size,))
        return []

    def _setup_transform(self, shape: tuple[int, int, int]) -> None:
        t = self.param.transform_param
        channels, height, width = shape
        self.scale = t.scale
        self.crop = t.crop_size
        self.mirror = t.mirror
        if self.crop and (self.crop > height or self.crop > width):
            raise self.error(f"crop_size {self.crop} is larger than the images ({height} x {width})")
        if t.HasField("mean_file") and len(t.mean_value):
            raise self.error("set mean_file or mean_value, not both")
        self.mean: np.ndarray | None = None
        if t.HasField("mean_file"):
            mean = read_binaryproto_mean(self.resolve(t.mean_file)).astype(np.float32)
            if mean.shape != shape:
                raise self.error(f"the mean {t.mean_file} has shape {mean.shape}, the images {shape}")
            self.mean = mean
        elif len(t.mean_value):
            values = np.array(t.mean_value, dtype=np.float32)
            if len(values) not in (1, channels):
                raise self.error(f"mean_value has {len(values)} values for {channels} channels; give one or one per channel")
            self.mean = np.broadcast_to(values.reshape(-1, 1, 1), shape).astype(np.float32)

    def _decode(self, key: bytes, value: bytes) -> tuple[np.ndarray, int]:
        """A record's image (C x H x W float32, BGR for encoded colour images) and label."""
        datum = caffe_pb2.Datum()
        try:
            datum.ParseFromString(value)
        except Exception as exc:
            raise self.error(f"record {key!r} is not a Datum ({exc})") from exc
        if datum.encoded:
            from PIL import Image

            image = Image.open(io.BytesIO(datum.data))
            pixels = np.asarray(image.convert("L" if image.mode in ("L", "1", "I;16") else "RGB"), dtype=np.float32)
            return (pixels[None] if pixels.ndim == 2 else pixels[:, :, ::-1].transpose(2, 0, 1)), datum.label
        shape = (datum.channels, datum.height, datum.width)
        if datum.data:
            values = np.frombuffer(datum.data, dtype=np.uint8).astype(np.float32)
        else:
            values = np.array(datum.float_data, dtype=np.float32)
        if values.size != int(np.prod(shape)):
            raise self.error(f"record {key!r} holds {values.size} values for channels x height x width {shape}")
        return values.reshape(shape), datum.label

    def _transform(self, image: np.ndarray) -> np.ndarray:
        _, height, width = image.shape
        top, left = 0, 0
        if self.mirror:
            flip = bool(self.rng.integers(2))
        if self.crop:
            if self.phase == "TRAIN":
                top = int(self.rng.integers(height - self.crop + 1))
                left = int(self.rng.integers(width - self.crop + 1))
            else:
                top, left = (height - self.crop) // 2, (width - self.crop) // 2
            window = (slice(None), slice(top, top + self.crop), slice(left, left + self.crop))
            image = image[window]
            mean = self.mean[window] if self.mean is not None else None
        else:
            mean = self.mean
        if mean is not None:
            image = image - mean
        image = image * np.float32(self.scale)
        return image[:, :, ::-1] if self.mirror and flip else image

    def _next_record(self) -> tuple[bytes, bytes]:
        record = (self.cursor.key(), self.cursor.value())
        if not self.cursor.next():
            self.cursor.first()
        self.consumed += 1
        return record

    def forward(self, bottoms, params):
        images, labels = [], []
        for _ in range(self.batch_size):
            key, value = self._next_record()
            image, label = self._decode(key, value)
            if image.shape != self.image_shape:
                raise self.error(f"record {key!r} has shape {image.shape}, the first record {self.image_shape}")
            images.append(self._transform(image))
            labels.append(label)
        tops = [torch.from_numpy(np.stack(images).astype(np.float32))]
        if len(self.param.top) == 2:
            tops.append(torch.tensor(labels, dtype=torch.float32))
        return tops

    def seek_records(self, count: int) -> None:
        """Skip ``count`` records (wrapping around)."""
        for _ in range(count):
            self._next_record()

    def position(self) -> dict:
        return {"records": self.consumed, "key": self.cursor.key().decode("utf-8", "replace")}

    def seek(self, batches: int) -> None:
        self.seek_records(batches * self.batch_size)


DATA_LAYERS: dict[str, type[DataLayer]] = {cls.type: cls for cls in (HDF5Data, Data)}
