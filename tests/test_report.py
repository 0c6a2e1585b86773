"""The HTML report on a made-up run folder: its content, its self-containment, and how it renders in Chromium."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from harrison.cli import main
from harrison.config import PROJECT_ROOT
from harrison.dataset import figures, lists, stats
from harrison.features import STRING
from harrison.report import collect, html
from harrison.files import write_json
from harrison.table import write_table1

CONFIG = str(PROJECT_ROOT / "configs" / "demo.yaml")
MODELS = ("object", "scene", "object_scene")
TAGS = ["sky", "sea", "cat", "dog", "red", "car", "tree", "night"]
MAGENTA = (255, 0, 255)
N_TEST, N_TRAIN = 20, 40


def make_run(workdir: Path, *, evaluated: bool = True) -> dict:
    """A run folder in the documented layout: dataset/, models/<m>/loss.csv, eval/<m>/, results/table1.json."""
    rng = np.random.default_rng(3)
    images_dir = workdir / "photos"
    images_dir.mkdir(parents=True)
    names = [f"photos/p{i:03d}.jpg" for i in range(N_TEST + N_TRAIN)]
    for name in names:
        Image.new("RGB", (160, 120), MAGENTA).save(workdir / name, quality=95)
    labels = [sorted(rng.choice(len(TAGS), size=rng.integers(1, 4), replace=False).tolist()) for _ in names]
    test, train = slice(0, N_TEST), slice(N_TEST, None)
    dataset = workdir / "dataset"
    counts = stats.class_counts(labels, len(TAGS))
    lists.write_vocab(dataset / "vocab.tsv", zip(TAGS, counts.tolist()))
    lists.write_split(dataset / "test.tsv", names[test], labels[test])
    lists.write_split(dataset / "train.tsv", names[train], labels[train])
    summary = stats.label_stats(labels)
    write_json(dataset / "stats.json", {**summary, "classes": len(TAGS), "train": N_TRAIN, "test": N_TEST,
                                        "coverage": stats.coverage(counts.tolist())})
    figures.tags_per_image_figure(summary["tags_per_image"]["histogram"], dataset / "figures" / "tags_per_image.png")
    figures.tag_frequency_figure(TAGS, counts.tolist(), dataset / "figures" / "tag_frequency.png")
    write_json(dataset / "manifest.json", {"image_root": str(workdir), "num_classes": len(TAGS)})
    (workdir / names[5]).unlink()  # a test image that went missing since
    results = {}
    for index, model in enumerate(MODELS):
        folder = workdir / "models" / model
        folder.mkdir(parents=True)
        with open(folder / "loss.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["phase", "iteration", "name", "value"])
            for it in range(0, 101, 10):
                writer.writerow(["train", it, "loss", 5.0 * np.exp(-it / (30 + 10 * index)) + 0.5])
                writer.writerow(["train", it, "lr", 0.1])
            for it in (0, 50, 100):
                writer.writerow(["test", it, "loss", 5.2 * np.exp(-it / (30 + 10 * index)) + 0.7])
        write_json(folder / "manifest.json", {"stage": "train", "status": "done", "iterations": 1200, "seconds": 12.5,
                                              "engine": {"engine": "torch", "version": "2.13.0", "mode": "CPU"}})
        if not evaluated:
            continue
        truth = np.zeros((N_TEST, len(TAGS)), dtype=np.float32)
        for row, ids in enumerate(labels[test]):
            truth[row, ids] = 1.0
        scores = (0.6 * truth + rng.random(truth.shape)).astype(np.float32) / 1.6
        out = workdir / "eval" / model
        out.mkdir(parents=True)
        with h5py.File(out / "scores.h5", "w") as handle:
            handle.create_dataset("scores", data=scores)
            handle.create_dataset("image", data=np.array(names[test], dtype=object), dtype=STRING)
        metrics = {"model": model, "k": 5, "engine": "torch", "precision@1": 0.3 + 0.01 * index,
                   "recall@5": 0.2, "accuracy@5": 0.5}
        write_json(out / "metrics.json", metrics)
        results[model] = metrics
    if evaluated:
        write_table1(results, workdir / "results")
    return {"names": names, "labels": labels}


def report(workdir: Path, *extra: str) -> Path:
    assert main(["report", "--config", CONFIG, "--workdir", str(workdir), *extra]) == 0
    return workdir / "results" / "report" / "index.html"


def test_report_content_and_self_containment(tmp_path):
    made = make_run(tmp_path)
    index = report(tmp_path)
    text = index.read_text(encoding="utf-8")
    folder = index.parent
    # Table 1: the paper's numbers beside ours, and the difference
    assert "VGG-Object + VGG-Scene" in text and "30.16" in text and "32.00" in text
    assert '<span class="pos">+1.84</span>' in text and "not comparable" not in text
    assert text.index("<td>VGG-Object</td>") < text.index("<td>VGG-Scene</td>") < text.index("<td>VGG-Object + VGG-Scene</td>")
    # how each model was trained
    assert text.count("<td>done</td><td>torch 2.13.0 CPU</td><td>1,200</td><td>12.5</td>") == 3
    # offline: no script, no external reference, every picture inside the report folder
    assert "<script" not in text.lower()
    assert not re.search(r"(?:src|href)=\"(?:https?:|//|/)", text)
    sources = re.findall(r'<img[^>]* src="([^"]+)"', text)
    assert {"loss.png", "tags.png", "dataset_tags_per_image.png", "dataset_tag_frequency.png"} <= set(sources)
    for source in sources:
        assert (folder / source).is_file(), source
        assert not Path(source).is_absolute() and ".." not in source
    # gallery: 12 cards, one of them the missing image, the others with thumbnails and highlighted hits
    assert text.count('class="card"') == 12
    thumbs = [s for s in sources if s.startswith("thumbs/")]
    assert len(thumbs) == 11 and "file not found" in text
    with Image.open(folder / thumbs[0]) as thumb:
        assert max(thumb.size) <= 240
    assert 'class="tag hit"' in text
    # the object_scene model (the config's last) fills the gallery, each card's top 5 best first
    assert "(VGG-Object + VGG-Scene)" in text
    first = re.search(r"<ol>(.*?)</ol>", text).group(1)
    scores = [float(s) for s in re.findall(r"</span> ([0-9.]+)</li>", first)]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    # per-tag table: the most frequent tag first, with its dataset count
    counts = np.bincount([c for ids in made["labels"] for c in ids], minlength=len(TAGS))
    top = TAGS[int(np.argmax(counts))]
    assert re.search(rf'<table class="tags">.*?<tbody><tr><td>#{top}</td><td>{counts.max()}</td>', text)
    # nothing half-written is left beside the report
    assert [p.name for p in (tmp_path / "results").iterdir() if p.name.startswith(".")] == []


def test_demo_run_is_not_set_against_the_paper(tmp_path):
    make_run(tmp_path)
    write_json(tmp_path / "dataset" / "manifest.json", {"image_root": str(tmp_path), "num_classes": len(TAGS),
                                                         "settings": {"source": "crawl"}})
    write_json(tmp_path / "weights" / "object.caffemodel.json", {"seed": 11, "weights_sha256": "ab12"})
    write_json(tmp_path / "features" / "object" / "manifest.json", {"splits": {"test": {"weights_sha256": "ab12"}}})
    text = report(tmp_path).read_text(encoding="utf-8")
    assert "Demo data and nets: not comparable with the paper&#x27;s numbers." in text
    assert '<span class="neutral">+1.84</span>' in text and 'class="pos"' not in text and 'class="neg"' not in text
    # the release's data with filler-made nets: only the nets are named
    write_json(tmp_path / "dataset" / "manifest.json", {"settings": {"source": "release"}})
    assert collect.not_comparable(tmp_path) == ("feature nets with filler-made weights, not the pretrained VGG-16s: "
                                                "not comparable with the paper's numbers")
    (tmp_path / "weights" / "object.caffemodel.json").unlink()
    assert collect.not_comparable(tmp_path) is None


@pytest.mark.parametrize("coverage, distinct, shown", [
    ({"top_1000": 0.59, "top_5000": 0.746}, 20000, ["59.0%", "74.6%"]),  # stats.json as the paper has it
    ({"top_1000": 1.0, "top_5000": 1.0}, 72, ["n/a (only 72 distinct tags)"] * 2),  # older stats.json, few tags
    ({"top_1000": 0.9, "top_5000": None}, None, ["90.0%", "n/a"]),
    ({"top_1000": None, "top_5000": None, "reason": "fewer distinct tags"}, None, ["n/a (fewer distinct tags)"] * 2),
    ({"top_1000": {"share": None, "reason": "the release has 997"}, "top_5000": {"share": 0.5}}, None,
     ["n/a (the release has 997)", "50.0%"]),
    (None, None, []),
])
def test_dataset_table_numbers(coverage, distinct, shown):
    stats = {"images": 744, "coverage": coverage, "tags_per_image": {"mean": 4.0161, "min": 1, "max": 9}}
    if distinct is not None:
        stats["distinct_tags"] = distinct
    text = html.dataset_section(stats, [])
    assert "<td>4.02 (1 to 9)</td>" in text and "4.016" not in text
    assert re.findall(r"held by the top \d+ tags</td><td>([^<]*)</td>", text) == shown


def test_partial_run_says_what_to_run(tmp_path):
    make_run(tmp_path, evaluated=False)
    text = report(tmp_path).read_text(encoding="utf-8")
    assert "run harrison evaluate and harrison table" in text
    assert 'src="loss.png"' in text and "tags per image" in text


def test_rerun_replaces_the_report(tmp_path):
    make_run(tmp_path)
    index = report(tmp_path)
    (index.parent / "stale.png").write_bytes(b"x")
    report(tmp_path, "--model", "scene", "--images", "4")
    text = index.read_text(encoding="utf-8")
    assert "(VGG-Scene)" in text and text.count('class="card"') == 4
    assert not (index.parent / "stale.png").exists()


def test_unknown_model_is_an_error(tmp_path, capsys):
    make_run(tmp_path)
    assert main(["report", "--config", CONFIG, "--workdir", str(tmp_path), "--model", "nope"]) == 2
    assert "defines object, scene, object_scene" in capsys.readouterr().err


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return found


def _near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    return int((np.abs(pixels.astype(np.int16) - np.array(colour, dtype=np.int16)).max(axis=2) <= tolerance).sum())


def test_report_renders_in_chromium(tmp_path, chromium):
    make_run(tmp_path / "run")
    index = report(tmp_path / "run")
    shot = tmp_path / "shot.png"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
               f"--screenshot={shot}", "--window-size=1200,5000", "--hide-scrollbars", index.as_uri()]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (5000, 1200)
    # the eleven magenta thumbnails loaded, shown 200 x 150 (a broken image shows a small icon instead)
    assert _near(pixels, MAGENTA) >= 0.95 * 11 * 200 * 150
    # the loss chart (matplotlib's first line colour) and the bar charts (dataset, per tag) loaded
    assert _near(pixels, (31, 119, 180), 20) > 500
    assert _near(pixels, (76, 114, 176), 10) > 20000
    assert _near(pixels, (221, 132, 82), 10) > 20000
    # highlighted hits and plenty of text
    assert _near(pixels, (198, 240, 194), 6) > 500
    assert (pixels.min(axis=2) < 100).sum() > 20000
