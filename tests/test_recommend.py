"""harrison recommend on a small trained demo run: the scores equal evaluate's for test images, any Pillow format and
size is answered, unreadable photos are reported while the rest are answered, and mismatched weights are refused.

``small_config`` and ``small_run`` (a demo run on the first posts of the demo crawl) are shared with
tests/test_reliability.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from harrison.cli import main
from harrison.config import DEFAULT_CONFIG, PROJECT_ROOT, derive_config, load_config

pytestmark = pytest.mark.caffe
DEMO = PROJECT_ROOT / "data" / "demo"


def small_config(folder: Path, posts: int = 90, test_size: int = 16, **updates: str) -> Path:
    """A demo config for a run in ``folder/run`` on the first ``posts`` posts of the demo crawl."""
    assert main(["make-demo"]) == 0
    folder.mkdir(parents=True, exist_ok=True)
    crawl = folder / "crawl.jsonl"
    with open(DEMO / "crawl.jsonl", encoding="utf-8") as source:
        crawl.write_text("".join(line for _, line in zip(range(posts), source)), encoding="utf-8")
    settings = {"workdir": str(folder / "run"), "dataset.crawl": str(crawl), "dataset.image_root": str(DEMO),
                "dataset.test_size": str(test_size), **updates}
    return derive_config(DEFAULT_CONFIG, folder / "config.yaml", settings)


def small_run(config: Path, engine: str, models: tuple[str, ...] = ("object_scene",)) -> Path:
    """Build, extract, train ``models`` and evaluate them; the run folder."""
    common = ["--config", str(config)]
    for stage in ("build-dataset", "make-weights", "extract"):
        assert main([stage, *common] + ([] if stage == "build-dataset" else ["--engine", engine])) == 0, stage
    for model in models:
        for stage in ("train", "evaluate"):
            assert main([stage, *common, "--model", model, "--engine", engine]) == 0, f"{stage} {model}"
    return load_config(config).workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, caffe_engine):
    folder = tmp_path_factory.mktemp("recommend")
    config = small_config(folder)
    return config, small_run(config, caffe_engine.name, ("object_scene", "object"))


def recommend(capsys, config: Path, *args: str) -> tuple[int, str, str]:
    code = main(["recommend", *args, "--config", str(config), "--engine", "caffe"])
    out, err = capsys.readouterr()
    return code, out, err


def eval_scores(workdir: Path, model: str) -> tuple[np.ndarray, list[str]]:
    with h5py.File(workdir / "eval" / model / "scores.h5", "r") as handle:
        return handle["scores"][:], [name.decode() for name in handle["image"][:]]


@pytest.mark.parametrize("model", ["object_scene", "object"])
def test_scores_equal_evaluate_for_test_images(trained, capsys, model):
    config, workdir = trained
    scores, images = eval_scores(workdir, model)
    picked = [0, 3, len(images) - 1]
    code, out, _ = recommend(capsys, config, *(str(DEMO / images[i]) for i in picked), "-k", "7", "--model", model, "--json")
    assert code == 0
    answers = json.loads(out)
    vocab = [line.split("\t")[1] for line in (workdir / "dataset" / "vocab.tsv").read_text().splitlines()[1:]]
    for answer, row in zip(answers, picked):
        assert answer["photo"] == str(DEMO / images[row])
        expected = np.argsort(-scores[row], kind="stable")[:7]
        assert [t["tag"] for t in answer["tags"]] == [vocab[c] for c in expected]
        np.testing.assert_allclose([t["score"] for t in answer["tags"]], scores[row][expected], atol=2e-6)


def test_any_format_and_size_and_bad_files(trained, capsys, tmp_path):
    config, workdir = trained
    scores, images = eval_scores(workdir, "object_scene")
    source = DEMO / images[1]
    with Image.open(source) as image:
        rgb = image.convert("RGB")
    rgb.save(tmp_path / "same.png")  # lossless: the same pixels as the JPEG, so the same scores
    rgb.resize((3000, 2000)).save(tmp_path / "large.jpg")
    rgb.convert("L").save(tmp_path / "gray.jpg")
    rgb.convert("RGBA").save(tmp_path / "alpha.png")
    rgb.convert("P").save(tmp_path / "palette.gif")
    rgb.save(tmp_path / "photo.webp")
    (tmp_path / "text.jpg").write_text("not a picture")
    (tmp_path / "cut.jpg").write_bytes(source.read_bytes()[:300])
    photos = ["same.png", "text.jpg", "large.jpg", "gray.jpg", "missing.jpg", "alpha.png", "palette.gif", "photo.webp", "cut.jpg"]
    code, out, err = recommend(capsys, config, *(str(tmp_path / p) for p in photos), "--json")
    assert code == 1
    answers = {Path(a["photo"]).name: a for a in json.loads(out)}
    assert list(answers) == photos
    assert {name for name, a in answers.items() if "error" in a} == {"text.jpg", "missing.jpg", "cut.jpg"}
    assert answers["missing.jpg"]["error"] == "file not found"
    assert "truncated" in answers["cut.jpg"]["error"].lower()
    for name in ("text.jpg", "missing.jpg", "cut.jpg"):
        assert f"{tmp_path / name}: cannot read this photo" in err
    for name in set(photos) - {"text.jpg", "missing.jpg", "cut.jpg"}:
        tags = answers[name]["tags"]
        assert len(tags) == 5 and all(0.0 < t["score"] < 1.0 for t in tags)
        assert [t["score"] for t in tags] == sorted((t["score"] for t in tags), reverse=True)
    np.testing.assert_allclose([t["score"] for t in answers["same.png"]["tags"]], np.sort(scores[1])[::-1][:5], atol=2e-6)


def test_text_output(trained, capsys):
    config, workdir = trained
    _, images = eval_scores(workdir, "object_scene")
    code, out, _ = recommend(capsys, config, str(DEMO / images[2]), "-k", "3")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == str(DEMO / images[2]) and len(lines) == 4
    assert [line.split()[0] for line in lines[1:]] == ["1.", "2.", "3."]
    assert all(line.split()[1].startswith("#") and 0 < float(line.split()[2]) < 1 for line in lines[1:])


def test_refuses_what_does_not_match(trained, capsys, tmp_path):
    config, workdir = trained
    _, images = eval_scores(workdir, "object_scene")
    photo = str(DEMO / images[0])
    code, _, err = recommend(capsys, config, photo, "--model", "scene")
    assert code == 2 and "not trained; run harrison train --model scene" in err
    code, _, err = recommend(capsys, config, photo, "-k", "0")
    assert code == 2 and "-k 0" in err
    # feature-net weights other than those that made the training features
    other = tmp_path / "other.caffemodel"
    net = load_config(config).resolve(load_config(config)["features"]["object"]["net"])
    assert main(["make-weights", "--net", str(net), "--out", str(other), "--seed", "99", "--engine", "caffe"]) == 0
    changed = derive_config(config, tmp_path / "changed.yaml", {"features.object.weights": str(other)})
    code, _, err = recommend(capsys, changed, photo)
    assert code == 2 and "is not the weights file that made" in err and "features.object.weights" in err


def test_model_folder_instead_of_a_name(trained, capsys, tmp_path, monkeypatch):
    """--model DIR: a trained model's folder gives the run folder and the model; its config is the one the run's
    dataset was built from, so no --config is needed. A folder that is not a trained model is refused."""
    config, workdir = trained
    _, images = eval_scores(workdir, "object")
    photo = str(DEMO / images[0])
    _, by_name, _ = recommend(capsys, config, photo, "--model", "object", "--json")
    assert main(["recommend", photo, "--model", str(workdir / "models" / "object") + "/", "--json", "--engine", "caffe"]) == 0
    assert capsys.readouterr().out == by_name
    monkeypatch.chdir(workdir / "models" / "object")
    assert main(["recommend", photo, "--model", ".", "--json", "--engine", "caffe"]) == 0
    assert capsys.readouterr().out == by_name
    for folder in (tmp_path, workdir / "eval" / "object", tmp_path / "missing"):
        assert main(["recommend", photo, "--model", str(folder), "--engine", "caffe"]) == 2
        assert f"--model {folder}: not a trained model's folder" in capsys.readouterr().err
    code = main(["recommend", photo, "--model", str(workdir / "models" / "object"), "--workdir", str(tmp_path)])
    assert code == 2 and "leave out --workdir" in capsys.readouterr().err


def test_nothing_trained_points_at_the_main_script(capsys, tmp_path):
    code = main(["recommend", str(tmp_path / "photo.jpg"), "--workdir", str(tmp_path / "fresh")])
    assert code == 2 and "run scripts/reproduce_table1.sh (it builds the dataset" in capsys.readouterr().err
