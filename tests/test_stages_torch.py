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
