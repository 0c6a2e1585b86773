"""Run configs: loading, path resolution, clear errors and derived configs."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import yaml

from harrison.config import DEFAULT_CONFIG, config_from_args, derive_config, load_config
from harrison.engines import get_engine
from harrison.errors import HarrisonError

REPO = Path(__file__).resolve().parent.parent


def test_demo_config_resolves_paths_against_its_folder():
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config["name"] == "demo"
    assert config.workdir == REPO / "runs" / "demo"
    assert config.resolve(config.section("features", "object", "net")) == REPO / "prototxt/demo/vgg_object/deploy.prototxt"


def test_workdir_override(tmp_path):
    config = load_config(REPO / "configs" / "demo.yaml", workdir=tmp_path / "run")
    assert config.workdir == tmp_path / "run"


def test_missing_key_names_file_and_key():
    config = load_config(REPO / "configs" / "demo.yaml")
    with pytest.raises(HarrisonError, match=r"demo\.yaml: missing key 'features\.nope'"):
        config.section("features", "nope", "net")


def test_malformed_yaml_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfeatures: [a\n")
    with pytest.raises(HarrisonError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(bad)


def test_missing_config_says_what_to_do(tmp_path):
    with pytest.raises(HarrisonError, match="config not found"):
        load_config(tmp_path / "none.yaml")


def test_derived_config_is_absolute_and_updated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = derive_config(REPO / "configs" / "harrison.yaml", tmp_path / "run" / "config.yaml",
                        {"dataset.release": "HARRISON", "features.object.weights": "w.caffemodel", "dataset.test_size": "10"})
    data = yaml.safe_load(out.read_text())
    assert data["dataset"]["release"] == str(tmp_path / "HARRISON")
    assert data["dataset"]["test_size"] == 10
    assert data["features"]["object"]["weights"] == str(tmp_path / "w.caffemodel")
    assert data["features"]["scene"]["net"] == str(REPO / "prototxt/vgg16_scene/deploy.prototxt")
    assert load_config(out).workdir == REPO / "runs" / "harrison"


def test_the_configs_caffe_setting_reaches_engine_discovery(tmp_path, monkeypatch):
    for name in ("HARRISON_CAFFE_ROOT", "HARRISON_CAFFE_PREFIX"):
        monkeypatch.setenv(name, "")  # recorded, so that the test's end restores the variable as it was
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    config = derive_config(DEFAULT_CONFIG, tmp_path / "config.yaml", {"caffe.root": "my-root"})
    config_from_args(argparse.Namespace(config=config, workdir=None))
    assert os.environ["HARRISON_CAFFE_ROOT"] == str(tmp_path / "my-root")
    with pytest.raises(HarrisonError, match="HARRISON_CAFFE_ROOT is set, but real Caffe does not run there"):
        get_engine("auto")
    monkeypatch.setenv("HARRISON_CAFFE_ROOT", "/from/the/environment")
    config_from_args(argparse.Namespace(config=config, workdir=None))
    assert os.environ["HARRISON_CAFFE_ROOT"] == "/from/the/environment"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "caffe": {"home": "x"}}))
    with pytest.raises(HarrisonError, match="'caffe' takes 'root'"):
        config_from_args(argparse.Namespace(config=tmp_path / "bad.yaml", workdir=None))
