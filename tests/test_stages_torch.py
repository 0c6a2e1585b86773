"""The demo stage chain with the torch engine: extraction of both demo nets, training of the three classifiers,
evaluation to a three-row Table 1, and an interrupted extraction that resumes to the same file."""
from __future__ import annotations

import json

import pytest

from harrison.engines import get_engine
from test_stages_caffe import check_chain, interrupted_extraction_resumes, run_chain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The chain on one torch thread: the demo's nets are tiny, and on a busy 2-core machine OpenMP threads
    that wait for each other made it 8 times slower (measured: 200 training iterations, 3.7 s against 29 s)."""
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARRISON_THREADS", "1")
        engine, _ = get_engine("torch")
        workdir = tmp_path_factory.mktemp("torch") / "run"
        run_chain(workdir, engine)
        yield workdir
    torch.set_num_threads(threads)


def test_demo_chain_with_the_torch_engine(chain):
    check_chain(chain)
    model_engine = json.loads((chain / "models" / "object_scene" / "manifest.json").read_text())["engine"]
    assert model_engine["engine"] == "torch" and model_engine["chosen_because"] == "--engine torch asked for"
    feature_engine = json.loads((chain / "features" / "object" / "manifest.json").read_text())["splits"]["test"]["engine_facts"]
    assert feature_engine["engine"] == "torch" and feature_engine["chosen_because"] == "--engine torch asked for"
    assert json.loads((chain / "eval" / "scene" / "metrics.json").read_text())["engine"] == "torch"


def test_interrupted_extraction_resumes_to_the_same_file(chain, tmp_path):
    interrupted_extraction_resumes(chain, tmp_path, "torch")


def test_results_manifest_gathers_each_models_provenance(chain):
    """results/manifest.json: per model the dataset seed, feature, training and evaluation engines, versions,
    the solver's random_seed, checksums and timings; a rerun of a skipped extraction keeps its recorded time."""
    from harrison.files import sha256
    from harrison.proto.io import read_solver
    from test_stages_caffe import harrison

    harrison("extract", "--workdir", str(chain), "--engine", "torch", "--feature", "object")  # up to date: skipped
    harrison("table", "--workdir", str(chain))
    record = json.loads((chain / "results" / "manifest.json").read_text())
    assert record["stage"] == "table" and set(record["outputs"]) == {str(chain / "results" / f"table1.{ext}") for ext in ("md", "csv", "json")}
    assert set(record["models"]) == {"object", "scene", "object_scene"}
    uses = {"object": {"object"}, "scene": {"scene"}, "object_scene": {"object", "scene"}}
    for model, stages in record["models"].items():
        assert stages["dataset"]["seed"] == json.loads((chain / "dataset" / "manifest.json").read_text())["seed"]
        assert str(chain / "dataset" / "train.tsv") in stages["dataset"]["outputs"]
        assert set(stages["features"]) == uses[model]
        for feature in stages["features"].values():
            for split in ("train", "test"):
                assert feature["splits"][split]["engine_facts"]["engine"] == "torch"
                assert feature["splits"][split]["seconds"] >= 0
        train, evaluate = stages["train"], stages["evaluate"]
        solver = chain / "models" / model / "solver.prototxt"
        assert train["random_seed"] == read_solver(solver).random_seed and train["solver"] == str(solver)
        assert train["engine"]["engine"] == evaluate["engine"]["engine"] == "torch"
        assert train["seconds"] >= 0 and evaluate["seconds"] >= 0 and train["iterations"] > 0
        assert train["versions"]["torch"] and evaluate["versions"]["numpy"]
        weights = [path for path in train["outputs"] if path.endswith(".caffemodel")]
        assert len(weights) == 1 and evaluate["inputs"][weights[0]] == train["outputs"][weights[0]] == sha256(weights[0])
        assert evaluate["outputs"][str(chain / "eval" / model / "metrics.json")] == record["inputs"][str(chain / "eval" / model / "metrics.json")]
