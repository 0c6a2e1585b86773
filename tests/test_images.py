"""Image decoding in every Pillow mode, bad files, and pycaffe's VGG preprocessing (resize figures from pycaffe itself)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from harrison.errors import HarrisonError
from harrison.images import ImageError, PreprocessSpec, load_batches, load_preprocess_spec, load_rgb, preprocess, resize

RNG = np.random.default_rng(1)
PIXELS = RNG.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
FIXED = "family/image_2411.jpg", "sun/image_99.jpg"


def save(tmp_path, image: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgb_png_comes_back_exactly_in_zero_one(tmp_path):
    rgb = load_rgb(save(tmp_path, Image.fromarray(PIXELS), "a.png"))
    assert rgb.dtype == np.float32 and rgb.shape == (12, 16, 3)
    assert np.allclose(rgb * 255, PIXELS, atol=1e-4)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1"])
def test_other_modes_become_rgb_as_pillow_converts_them(tmp_path, mode):
    image = Image.fromarray(PIXELS).convert(mode)
    rgb = load_rgb(save(tmp_path, image, "m.png"))
    assert rgb.shape == (12, 16, 3)
    expected = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    assert np.allclose(rgb, expected, atol=1e-6)
    if mode in ("L", "LA", "1"):
        assert np.array_equal(rgb[:, :, 0], rgb[:, :, 2])


def test_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.dstack([PIXELS, np.zeros((12, 16), dtype=np.uint8)])
    rgb = load_rgb(save(tmp_path, Image.fromarray(rgba, "RGBA"), "t.png"))
    assert np.allclose(rgb * 255, PIXELS, atol=1e-4)


def test_cmyk_jpeg_decodes_to_rgb(tmp_path):
    path = save(tmp_path, Image.fromarray(PIXELS).convert("CMYK"), "c.jpg", quality=95)
    rgb = load_rgb(path)
    assert rgb.shape == (12, 16, 3) and 0.0 <= rgb.min() and rgb.max() <= 1.0


def test_sixteen_bit_grayscale_keeps_its_range(tmp_path):
    deep = np.array([[0, 1000, 65535], [30000, 40000, 50000]], dtype=np.uint16)
    rgb = load_rgb(save(tmp_path, Image.fromarray(deep), "d.png"))
    assert rgb.shape == (2, 3, 3)
    assert np.allclose(rgb[:, :, 1], deep / 65535.0, atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    rgb = load_rgb(save(tmp_path, Image.fromarray(PIXELS), "o.png", exif=exif))
    assert rgb.shape == (16, 12, 3)
    assert np.allclose(rgb * 255, np.rot90(PIXELS, k=-1), atol=1e-4)


def test_truncated_missing_and_non_images_raise_image_error(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    cases = {cut: "truncated", text: "not an image", tmp_path / "absent.jpg": "not found", tmp_path: ""}
    for path, reason in cases.items():
        with pytest.raises(ImageError) as caught:
            load_rgb(path)
        assert caught.value.path == str(path) and reason in caught.value.reason
        assert isinstance(caught.value, HarrisonError)


def test_truncated_file_read_is_reported_as_truncated(tmp_path):
    """Pillow words a file cut inside a PNG chunk "Truncated File Read", with a capital T."""
    info = PngImagePlugin.PngInfo()
    info.add_text("note", "x" * 2000)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=info)
    cut = tmp_path / "cut.png"
    cut.write_bytes(buffer.getvalue()[:500])
    with pytest.raises(ImageError) as caught:
        load_rgb(cut)
    assert caught.value.reason == "truncated image data (Truncated File Read)"


def test_a_photo_over_the_pixel_limit_is_decoded(tmp_path, monkeypatch):
    """A photo Pillow would refuse as a bomb: a JPEG comes in draft mode near the net's size, a PNG at full size."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # refused above 2,000 pixels
    photo = RNG.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    jpeg = save(tmp_path, Image.fromarray(photo), "big.jpg", quality=95)
    png = save(tmp_path, Image.fromarray(photo), "big.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(jpeg)
    # draft scales by 1/2, 1/4 or 1/8 and keeps each side at least 50: 400 x 300 / 4 (1/8 would give 38 rows)
    assert load_rgb(jpeg, (50, 40)).shape == (75, 100, 3)
    assert load_rgb(jpeg).shape == (300, 400, 3)
    assert np.array_equal(load_rgb(png, (50, 40)), photo.astype(np.float32) * np.float32(1.0 / 255.0))
    assert Image.MAX_IMAGE_PIXELS == 1000  # the limit is back for everything else
    spec = PreprocessSpec("data", (50, 40), 255.0, np.zeros((3, 1, 1), np.float32))
    batch = next(load_batches([jpeg, png], spec, 2, workers=2))
    assert batch.bad == [] and batch.data.shape == (2, 3, 50, 40)


def test_photos_within_the_limit_are_not_drafted(tmp_path):
    path = save(tmp_path, Image.fromarray(RNG.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)), "p.jpg")
    assert load_rgb(path, (50, 40)).shape == (300, 400, 3)


def test_the_release_fixed_images(release_dir):
    """Both re-issued images lack their last bytes: the tiny one is mostly missing, the other only its end marker."""
    root = release_dir / "fixed_images" / "instagram_dataset"
    for name in FIXED:
        with pytest.raises(ImageError, match="truncated"):
            load_rgb(root / name)


def test_resize_matches_pycaffe_resize_image():
    """Reference values printed by caffe.io.resize_image (Caffe 1.0, scikit-image 0.18) for these inputs."""
    shrink = (np.arange(7 * 9 * 3).reshape(7, 9, 3) % 11 / 10.0).astype(np.float32)
    expected = [[0.391219, 0.440546, 0.493807, 0.478395],
                [0.529375, 0.515436, 0.484563, 0.400315],
                [0.384907, 0.434784, 0.488045, 0.472083]]
    assert np.allclose(resize(shrink, (3, 4))[:, :, 0], expected, atol=2e-6)
    grow = (np.arange(3 * 3 * 3).reshape(3, 3, 3) % 5 / 4.0).astype(np.float32)
    expected = [[0.175, 0.575, 0.65, 0.35], [0.13125, 0.61875, 0.7125, 0.35], [0.0, 0.46875, 0.5625, 0.21875],
                [0.525, 0.6, 0.4125, 0.0875], [0.7, 0.55, 0.25, 0.0]]
    assert np.allclose(resize(grow, (5, 4))[:, :, 1], expected, atol=2e-6)


def test_resize_keeps_constants_and_same_size():
    flat = np.full((50, 40, 3), 0.25, dtype=np.float32)
    assert np.allclose(resize(flat, (7, 9)), 0.25)
    assert resize(PIXELS / 255.0, (12, 16)).shape == (12, 16, 3)


def test_preprocess_is_bgr_scaled_minus_mean_chw():
    spec = PreprocessSpec("data", (8, 10), 255.0, np.array([10.0, 20.0, 30.0], dtype=np.float32).reshape(3, 1, 1), "fc7")
    red = np.zeros((8, 10, 3), dtype=np.float32)
    red[:, :, 0] = 1.0
    out = preprocess(red, spec)
    assert out.shape == (3, 8, 10) and out.dtype == np.float32
    assert np.allclose(out[0], -10.0) and np.allclose(out[1], -20.0) and np.allclose(out[2], 255.0 - 30.0)


def test_preprocess_spec_from_yaml(tmp_path):
    path = tmp_path / "preprocess.yaml"
    path.write_text("input_blob: data\ninput_size: [6, 8]\nmean_bgr: [1, 2, 3]\nraw_scale: 255\nfeature_blob: fc7\n")
    spec = load_preprocess_spec(path)
    assert spec.input_size == (6, 8) and spec.feature_blob == "fc7" and spec.mean.ravel().tolist() == [1, 2, 3]
    path.write_text("input_blob: data\ninput_size: 8\nraw_scale: 255\nfeature_blob: fc7\n")
    with pytest.raises(HarrisonError, match="mean_bgr or mean_file"):
        load_preprocess_spec(path)


def test_preprocess_spec_with_a_mean_file_is_fitted_to_the_input(tmp_path):
    from harrison.proto.io import array_to_blob

    mean = np.stack([np.full((10, 10), v, dtype=np.float32) for v in (100.0, 110.0, 120.0)])[None]
    (tmp_path / "mean.binaryproto").write_bytes(array_to_blob(mean).SerializeToString())
    for fit in ("resize", "crop"):
        path = tmp_path / f"{fit}.yaml"
        path.write_text(f"input_blob: data\ninput_size: 6\nmean_file: mean.binaryproto\nmean_fit: {fit}\nfeature_blob: fc7\n")
        spec = load_preprocess_spec(path)
        assert spec.mean.shape == (3, 6, 6) and np.allclose(spec.mean[:, 2, 3], [100, 110, 120], atol=1e-3)


def test_load_batches_keeps_order_and_reports_bad_rows(tmp_path):
    spec = PreprocessSpec("data", (6, 6), 255.0, np.zeros((3, 1, 1), dtype=np.float32), "fc7")
    paths = []
    for i in range(7):
        path = tmp_path / f"{i}.png"
        if i == 3:
            path.write_bytes(b"\x89PNG broken")
        else:
            Image.fromarray(np.full((5 + i, 9, 3), 10 * i, dtype=np.uint8)).save(path)
        paths.append(path)
    batches = list(load_batches(paths, spec, 3, start=1, workers=2))
    assert [b.start for b in batches] == [1, 4] and [len(b.data) for b in batches] == [3, 3]
    assert batches[0].bad_rows == [2] and batches[0].bad[0].path == str(paths[3])
    assert np.all(batches[0].data[2] == 0)
    assert [float(b.data[row, 0, 0, 0]) for b in batches for row in range(3) if not (b.start == 1 and row == 2)] == \
        pytest.approx([10 * 255 / 255 * i for i in (1, 2, 4, 5, 6)])
