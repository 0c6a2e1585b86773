"""Datum LMDB as convert_imageset writes it: round trip, keys, BGR CHW layout, bad images; real Caffe's Data layer reads it."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from harrison.errors import HarrisonError
from harrison.lmdb_io import read_imageset, write_imageset


@pytest.fixture()
def imageset(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "images"
    folder.mkdir()
    names, pixels = [], []
    for i in range(6):
        name = f"sub/img {i}.png"
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        if i == 2:
            path.write_bytes(b"broken")
            pixels.append(None)
        else:
            array = rng.integers(0, 256, size=(8 + i, 9, 3), dtype=np.uint8)
            Image.fromarray(array).save(path)
            pixels.append(array)
        names.append(name)
    return [folder / n for n in names], names, pixels


def test_round_trip_keys_layout_and_skipped_images(imageset, tmp_path):
    paths, names, pixels = imageset
    result = write_imageset(paths, names, tmp_path / "db", labels=[7, 1, 2, 3, 4, 5])
    assert result.records == 5 and result.bad == [("sub/img 2.png", "not an image Pillow can read")]
    records = list(read_imageset(tmp_path / "db"))
    assert [key for key, _, _ in records] == [f"{i:08d}_{names[i]}" for i in (0, 1, 3, 4, 5)]
    assert [label for _, _, label in records] == [7, 1, 3, 4, 5]
    for (_, chw, _), i in zip(records, (0, 1, 3, 4, 5)):
        assert chw.dtype == np.uint8 and chw.shape == (3, 8 + i, 9)
        assert np.array_equal(chw, pixels[i][:, :, ::-1].transpose(2, 0, 1))


def test_resized_records_share_one_shape_and_refuse_to_overwrite(imageset, tmp_path):
    paths, names, _ = imageset
    write_imageset(paths, names, tmp_path / "new" / "db", size=(6, 7))
    assert {chw.shape for _, chw, _ in read_imageset(tmp_path / "new" / "db")} == {(3, 6, 7)}
    with pytest.raises(HarrisonError, match="already exists"):
        write_imageset(paths, names, tmp_path / "new" / "db")
    assert not (tmp_path / "new" / "db.partial").exists()


def test_real_caffe_data_layer_reads_our_lmdb(imageset, tmp_path, caffe_engine):
    paths, names, _ = imageset
    db = write_imageset(paths, names, tmp_path / "db", labels=[0, 1, 2, 3, 4, 5], size=(6, 7)).path
    net = tmp_path / "read_lmdb.prototxt"
    net.write_text(
        'name: "read_lmdb"\n'
        'layer { name: "data" type: "Data" top: "data" top: "label"\n'
        f'  data_param {{ source: "{db}" backend: LMDB batch_size: 5 }} }}\n'
    )
    ours = list(read_imageset(db))
    with caffe_engine.load_net(net, None) as runner:
        got = runner.forward({}, ["data", "label"])
    assert got["data"].shape == (5, 3, 6, 7)
    assert np.array_equal(got["data"], np.stack([chw for _, chw, _ in ours]).astype(np.float32))
    assert got["label"].ravel().tolist() == [label for _, _, label in ours]
