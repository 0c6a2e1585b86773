"""The demo generator: deterministic, real JPEGs, tags that follow the pictures, and the noise of a crawl."""
import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from harrison.cli import main
from harrison.dataset.build import BuildOptions, build_dataset
from harrison.dataset.demo import SPAM_DUMP, make_demo
from harrison.dataset.lists import dataset_info, read_split, read_vocab


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default demo (800 images, seed 7) and its dataset."""
    root = tmp_path_factory.mktemp("demo")
    folder, written = make_demo(root / "demo", images=800, seed=7)
    assert written
    dataset, _ = build_dataset(root / "dataset", image_root=folder, crawl=folder / "crawl.jsonl", options=BuildOptions(test_size=100))
    return folder, dataset


def test_same_seed_same_bytes(tmp_path):
    a, _ = make_demo(tmp_path / "a", images=30, seed=3)
    b, _ = make_demo(tmp_path / "b", images=30, seed=3)
    c, _ = make_demo(tmp_path / "c", images=30, seed=4)
    assert (a / "crawl.jsonl").read_bytes() == (b / "crawl.jsonl").read_bytes() != (c / "crawl.jsonl").read_bytes()
    assert [p.read_bytes() for p in sorted((a / "images").iterdir())] == [p.read_bytes() for p in sorted((b / "images").iterdir())]
    assert make_demo(a, images=30, seed=3) == (a, False)  # current: nothing to do
    (a / "images" / "00001.jpg").write_bytes(b"broken")
    assert make_demo(a, images=30, seed=3) == (a, True)
    assert (a / "images" / "00001.jpg").read_bytes() == (b / "images" / "00001.jpg").read_bytes()


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(Exception, match="not a demo folder"):
        make_demo(tmp_path / "mine", images=5)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_real_jpegs_and_a_noisy_crawl(demo):
    folder, _ = demo
    images = sorted((folder / "images").iterdir())
    assert len(images) == 800
    with Image.open(images[0]) as first:
        assert first.format == "JPEG" and first.size == (96, 96) and first.mode == "RGB"
    posts = [json.loads(line) for line in (folder / "crawl.jsonl").read_text().splitlines()]
    assert len(posts) > 800  # reposted images
    raw = [tag.lstrip("#") for p in posts for tag in p.get("tags", []) + re.findall(r"#(\w+)", p.get("caption", ""))]
    assert sum("caption" in p for p in posts) > 150 and sum("tags" in p for p in posts) > 400
    assert {"Dogs", "DOGS"} & set(raw) and {"flowers", "Flowers", "FLOWERS"} & set(raw)
    assert {"love2016", "l4l", "f4f"} <= set(raw)
    assert any(len(set(p.get("tags", []))) > 10 for p in posts)
    assert any(len(p.get("tags", [])) != len(set(t.lower().lstrip("#") for t in p.get("tags", []))) for p in posts)


def test_demo_dataset_is_small_clean_and_about_the_pictures(demo):
    folder, dataset = demo
    vocab = read_vocab(dataset)
    tags = [t for _, t, _ in vocab]
    assert 30 <= len(tags) <= 60
    assert all(t.isalpha() and t.islower() for t in tags)
    assert not set(SPAM_DUMP) & set(tags) and "dogs" not in tags and "dog" in tags
    info = dataset_info(dataset)
    assert info["counts"]["test"] == 100 and 700 <= info["counts"]["images"] <= 800
    assert 3.5 <= info["counts"]["tag_assignments"] / info["counts"]["images"] <= 4.5
    stats = json.loads((dataset / "stats.json").read_text())
    assert stats["dropped_posts"]["too_many_tags"] > 20 and stats["duplicate_images"] > 0

    # the tags follow what the pictures show: brightness and colour differ by tag
    images, labels = read_split(dataset, "train")
    pixels = np.stack([np.asarray(Image.open(folder / p), dtype=np.float32).mean(axis=(0, 1)) for p in images])
    index = {t: i for i, t in enumerate(tags)}

    def mean_of(tag):
        return pixels[[index[tag] in ids for ids in labels]].mean(axis=0)

    overall = pixels.mean(axis=0)
    assert mean_of("night").sum() < 0.5 * overall.sum()
    assert mean_of("snow").sum() > 1.2 * overall.sum()
    assert mean_of("grass")[1] > mean_of("grass")[0] + 30  # green over red
    assert mean_of("sea")[2] > overall[2] + 20  # blue


def test_build_dataset_generates_a_missing_demo_crawl(tmp_path, capsys):
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny",
        "workdir": "run",
        "dataset": {"source": "crawl", "crawl": "data/crawl.jsonl", "image_root": "data", "demo": {"images": 40, "seed": 1},
                    "top_n": 1000, "min_tags": 1, "max_tags": 10, "test_size": 5, "seed": 0, "verb_pass": False},
    }))
    assert main(["build-dataset", "--config", str(config)]) == 0
    assert "generating the demo data" in capsys.readouterr().out
    assert (tmp_path / "data" / "images" / "00039.jpg").exists()
    info = dataset_info(tmp_path / "run" / "dataset")
    assert info["counts"]["test"] == 5 and info["image_root"] == str(tmp_path / "data")
    assert info["config"] == str(config)
    assert main(["build-dataset", "--config", str(config)]) == 0
    assert "current, nothing to do" in capsys.readouterr().out
    assert main(["make-demo", "--config", str(config)]) == 0
    assert "current, nothing to do" in capsys.readouterr().out
