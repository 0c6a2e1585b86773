"""Real BVLC Caffe through harrison.engines.caffe: discovery, the worker, fillers, training, divergence, stages."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from google.protobuf import text_format

from harrison import caffelog, cli
from harrison.engines import get_engine
from harrison.engines.caffe import root as caffe_root
from harrison.engines.caffe.engine import CaffeEngine
from harrison.errors import HarrisonError
from harrison.files import sha256
from harrison.proto import caffe_pb2
import trainnets

REPO = Path(__file__).resolve().parent.parent
PROTOTXT = REPO / "prototxt"
DEMO_NETS = {"object": PROTOTXT / "demo/vgg_object/deploy.prototxt", "scene": PROTOTXT / "demo/vgg_scene/deploy.prototxt"}

pytestmark = pytest.mark.caffe


def normwise(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference over the largest absolute reference value."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def read_params(path: Path) -> dict[str, list[np.ndarray]]:
    """The blobs of a .caffemodel by layer name (shape from BlobShape)."""
    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    return {
        layer.name: [np.asarray(blob.data, dtype=np.float32).reshape(tuple(blob.shape.dim)) for blob in layer.blobs]
        for layer in net.layer if layer.blobs
    }


@pytest.fixture(scope="module")
def demo_weights(caffe_engine, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    return {name: caffe_engine.init_weights(net, folder / f"{name}.caffemodel", seed=5) for name, net in DEMO_NETS.items()}


def test_install_script_only_verifies_a_complete_root(caffe_engine):
    if caffe_engine.install.kind != "project":
        pytest.skip("Caffe was found elsewhere than the project's root")
    done = subprocess.run(["bash", str(REPO / "scripts/install_caffe.sh")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "is complete; verifying" in done.stdout and "pycaffe forward ok" in done.stdout
    assert "openblas-pthread/libblas.so.3" in done.stdout


def test_engine_is_real_caffe(caffe_engine):
    facts = caffe_engine.describe()
    assert facts["version"] == "1.0.0"
    assert facts["mode"] == "CPU"
    if facts["found"] == "project":
        assert "openblas" in facts["blas"].lower()
        assert facts["where"] == str(REPO / ".caffe-root")


@pytest.mark.parametrize("name", sorted(DEMO_NETS))
def test_demo_net_forward_matches_its_weights(caffe_engine, demo_weights, name):
    rng = np.random.default_rng(0)
    batch = rng.uniform(-120, 140, (3, 3, 64, 64)).astype(np.float32)
    with caffe_engine.load_net(DEMO_NETS[name], demo_weights[name]) as net:
        assert net.input_shapes() == {"data": (10, 3, 64, 64)}
        out = net.forward({"data": batch}, ["fc7", "fc8", "prob"])
        single = net.forward({"data": batch[:1]}, ["fc7"])
    fc7, fc8, prob = out["fc7"], out["fc8"], out["prob"]
    assert fc7.shape == (3, 128) and fc7.dtype == np.float32
    assert fc7.min() >= 0 and fc7.max() > 0.05, "fc7 is post-ReLU and alive with the xavier fillers"
    params = read_params(demo_weights[name])
    weight, bias = params["fc8"]
    assert normwise(fc8, fc7 @ weight.T + bias) < 1e-5
    expected = np.exp(fc8 - fc8.max(1, keepdims=True))
    np.testing.assert_allclose(prob, expected / expected.sum(1, keepdims=True), rtol=1e-4, atol=1e-7)
    assert normwise(single["fc7"][0], fc7[0]) < 1e-5, "a batch of one gives the same features"


def test_demo_nets_differ_in_init_and_outputs(demo_weights):
    object_params, scene_params = (read_params(demo_weights[name]) for name in ("object", "scene"))
    assert object_params["fc8"][0].shape == (100, 128) and scene_params["fc8"][0].shape == (41, 128)
    # conv2_1 (8 -> 16 channels, 3x3): xavier draws from U(-sqrt(3/n), sqrt(3/n)) with n = fan_in = 72 for the
    # object net (FAN_IN) and n = (72 + 144) / 2 = 108 for the scene net (AVERAGE).
    object_max, scene_max = (np.abs(p["conv2_1"][0]).max() for p in (object_params, scene_params))
    assert np.sqrt(3 / 108) < object_max <= np.sqrt(3 / 72)
    assert 0.95 * np.sqrt(3 / 108) < scene_max <= np.sqrt(3 / 108)


def test_vgg16_forward_with_msra_weights(caffe_engine, tmp_path):
    net = caffe_pb2.NetParameter()
    text_format.Parse((PROTOTXT / "vgg16_object/deploy.prototxt").read_text(), net)
    for layer in net.layer:
        param = layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param
        if layer.type in ("Convolution", "InnerProduct"):
            param.weight_filler.type = "msra"
    copy = tmp_path / "vgg16_msra.prototxt"
    copy.write_text(text_format.MessageToString(net))
    weights = caffe_engine.init_weights(copy, tmp_path / "vgg16.caffemodel", seed=3)
    image = np.random.default_rng(1).uniform(-120, 140, (1, 3, 224, 224)).astype(np.float32)
    with caffe_engine.load_net(copy, weights) as runner:
        assert runner.input_shapes() == {"data": (10, 3, 224, 224)}
        out = runner.forward({"data": image}, ["pool5", "fc7", "prob"])
    assert out["pool5"].shape == (1, 512, 7, 7)
    assert out["fc7"].shape == (1, 4096) and out["fc7"].min() >= 0 and out["fc7"].max() > 1
    assert out["prob"].shape == (1, 1000) and abs(out["prob"].sum() - 1) < 1e-4
    assert weights.stat().st_size > 138_000_000 * 4, "every one of VGG-16's 138M parameters is saved"


def test_init_weights_is_seeded(caffe_engine, tmp_path):
    net = DEMO_NETS["object"]
    first = caffe_engine.init_weights(net, tmp_path / "a.caffemodel", seed=9)
    again = caffe_engine.init_weights(net, tmp_path / "b.caffemodel", seed=9)
    other = caffe_engine.init_weights(net, tmp_path / "c.caffemodel", seed=10)
    assert sha256(first) == sha256(again)
    assert sha256(first) != sha256(other)
    limit = np.sqrt(3 / (8 * 9))  # xavier on conv1_2: fan_in = 8 channels x 3 x 3
    weight = read_params(first)["conv1_2"][0]
    assert np.abs(weight).max() <= limit and np.abs(weight).max() > 0.9 * limit
    assert not list(tmp_path.glob("*.partial")), "no temporary file is left behind"


def test_worker_serves_many_forwards_and_survives_bad_requests(caffe_engine, tmp_path):
    net = tmp_path / "tiny.prototxt"
    net.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
        '  inner_product_param { num_output: 3 weight_filler { type: "constant" value: 0.5 } '
        'bias_filler { type: "constant" value: 1 } } }\n'
    )
    with caffe_engine.load_net(net, None) as runner:
        for size in range(1, 201):
            x = np.full((size % 7 + 1, 4), size, dtype=np.float32)
            out = runner.forward({"data": x}, ["fc"])["fc"]
            assert out.shape == (size % 7 + 1, 3)
            np.testing.assert_allclose(out, 0.5 * 4 * size + 1)
        with pytest.raises(HarrisonError, match="no blob 'fc9'"):
            runner.forward({"data": x}, ["fc9"])
        assert runner.forward({"data": np.zeros((2, 4))}, ["fc"])["fc"].tolist() == [[1, 1, 1]] * 2


def test_worker_crash_is_reported(caffe_engine, tmp_path):
    net = tmp_path / "bad.prototxt"
    net.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }\n'
                   'layer { name: "x" type: "NoSuchLayer" bottom: "data" top: "x" }\n')
    with pytest.raises(HarrisonError, match="NoSuchLayer"):
        caffe_engine.load_net(net, None)


def demo_classifier(folder: Path, model: str = "object", classes: int = 6) -> Path:
    """The demo classifier and solver copied into ``folder`` with ``classes`` outputs, and 256-d rows like the demo's
    fc7 (nonnegative; each row mixes the patterns of its tags) in two train files and one test file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    patterns = np.maximum(rng.standard_normal((classes, 256)), 0)
    lists = {"train": [], "test": []}
    for name, rows in (("train_000", 150), ("train_001", 150), ("test_000", 100)):
        labels = (rng.random((rows, classes)) < 0.3).astype(np.float32)
        data = 0.3 * (labels @ patterns / np.maximum(labels.sum(1, keepdims=True), 1) + np.abs(rng.standard_normal((rows, 256))))
        with h5py.File(folder / f"{name}.h5", "w") as handle:
            handle["data"], handle["label"] = data.astype(np.float32), labels
        lists[name[:-4]].append(f"{name}.h5")
    for split, names in lists.items():
        (folder / f"{split}.txt").write_text("\n".join(names) + "\n")
    for name in ("train_test.prototxt", f"solver_{model}.prototxt"):
        text = (PROTOTXT / "demo/classifier" / name).read_text()
        (folder / name).write_text(text.replace("num_output: 1000", f"num_output: {classes}"))
    (folder / "snapshots").mkdir(exist_ok=True)
    return folder / f"solver_{model}.prototxt"


def test_train_demo_classifier_logs_snapshots_and_resumes(caffe_engine, tmp_path):
    solver = demo_classifier(tmp_path / "model")
    result = caffe_engine.train(solver, log=tmp_path / "train.log")
    snapshots = tmp_path / "model" / "snapshots"
    assert result.weights == snapshots / "object_iter_1200.caffemodel"
    assert result.state == snapshots / "object_iter_1200.solverstate"
    assert result.iterations == 1200
    assert (snapshots / "object_iter_600.caffemodel").exists() and (snapshots / "object_iter_600.solverstate").exists()
    log = caffelog.parse_log(result.log)
    assert log.done and [row.iteration for row in log.train][:3] == [0, 50, 100]
    losses = log.train_loss()
    assert losses[0] == pytest.approx(np.log(2), rel=0.3), "a fresh net outputs about 0.5 for every entry"
    assert np.mean([losses[i] for i in range(1000, 1200, 50)]) < 0.6 * losses[0]
    assert sorted(log.test_values("loss")) == [0, 300, 600, 900, 1200]
    rates = {row.iteration: row.lr for row in log.train}
    assert rates[750] == pytest.approx(0.5) and rates[800] == pytest.approx(0.05)

    resumed = caffe_engine.train(solver, log=tmp_path / "train.log", resume=snapshots / "object_iter_600.solverstate")
    assert resumed.weights == result.weights
    text = (tmp_path / "train.log").read_text()
    assert len(re.findall(r"solver\.cpp:\d+\] Optimization Done", text)) == 2, "the resumed run's log is appended"
    assert "Resuming from" in text
    events = map(caffelog.parse_line, text[text.index("Resuming from"):].splitlines())
    resumed_iterations = [e.iteration for e in events if isinstance(e, caffelog.Display) and not e.final]
    assert resumed_iterations[0] == 600 and resumed_iterations[-1] == 1150


def test_divergence_stops_training_and_names_the_iteration(caffe_engine, tmp_path):
    solver = trainnets.write_setup(tmp_path, base_lr=1e30, max_iter=100000, snapshot=100000, test_interval=100000)
    with pytest.raises(HarrisonError, match=r"diverged at iteration \d+") as caught:
        caffe_engine.train(solver, log=tmp_path / "train.log")
    iteration = int(re.search(r"iteration (\d+)", str(caught.value))[1])
    assert iteration < 100
    assert "nan" in (tmp_path / "train.log").read_text().lower() or "inf" in (tmp_path / "train.log").read_text()


def test_train_failure_shows_caffe_message(caffe_engine, tmp_path):
    solver = trainnets.write_setup(tmp_path)
    (tmp_path / "train.txt").write_text(str(tmp_path / "missing.h5") + "\n")
    with pytest.raises(HarrisonError, match="missing.h5"):
        caffe_engine.train(solver, log=tmp_path / "train.log")


def test_missing_root_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("HARRISON_CAFFE_PREFIX", raising=False)
    monkeypatch.setenv("HARRISON_CAFFE_ROOT", str(tmp_path / "nowhere"))
    found, why = CaffeEngine.available(None)
    assert not found
    assert "HARRISON_CAFFE_ROOT" in why and "install_caffe.sh" in why and str(tmp_path / "nowhere") in why
    with pytest.raises(HarrisonError, match="install_caffe.sh"):
        CaffeEngine.create(None)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "debootstrap").mkdir()
    monkeypatch.setenv("HARRISON_CAFFE_ROOT", str(tmp_path / "half"))
    assert "incomplete" in CaffeEngine.available(None)[1]
    with pytest.raises(HarrisonError, match="HARRISON_CAFFE_ROOT is set, but real Caffe does not run there"):
        get_engine("auto")  # an explicit setting that does not work is an error, not a quiet switch to torch


def test_a_command_prefix_runs_caffe(caffe_engine, demo_weights, monkeypatch, tmp_path):
    if caffe_engine.install.root is None:
        pytest.skip("the prefix is built from a Caffe root")
    prefix = caffe_root.bwrap_command(caffe_engine.install.root, [], REPO)
    monkeypatch.delenv("HARRISON_CAFFE_ROOT", raising=False)
    monkeypatch.setenv("HARRISON_CAFFE_PREFIX", " ".join(prefix))
    engine = CaffeEngine.create(None)
    assert engine.describe()["found"] == "prefix"
    batch = np.random.default_rng(2).uniform(-100, 100, (2, 3, 64, 64)).astype(np.float32)
    outputs = []
    for runner_engine in (engine, caffe_engine):
        with runner_engine.load_net(DEMO_NETS["object"], demo_weights["object"]) as runner:
            outputs.append(runner.forward({"data": batch}, ["fc7"])["fc7"])
    np.testing.assert_array_equal(*outputs)
    solver = demo_classifier(tmp_path / "model")  # relative paths: the prefix runs caffe in the solver's folder
    solver.write_text(re.sub(r"max_iter: \d+", "max_iter: 20", solver.read_text()))
    assert engine.train(solver, log=tmp_path / "train.log").weights.name == "object_iter_20.caffemodel"


def test_gpu_is_refused_by_a_cpu_build(caffe_engine):
    if caffe_engine.describe()["found"] != "project":
        pytest.skip("only the project's root is known to be a CPU build")
    found, why = CaffeEngine.available(0)
    assert not found and "CPU-only" in why


def test_bwrap_command_shows_host_paths_at_their_names(tmp_path):
    root = tmp_path / "root"
    for name in ("usr", "etc", "home", "opt"):
        (root / name).mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    net = str(PROTOTXT / "demo/classifier/train_test.prototxt")
    command = caffe_root.bwrap_command(root, ["caffe", "test", "-model", net, "-weights", "/opt/w.caffemodel"], Path("/tmp"))
    pairs = {(command[i], command[i + 2]) for i in range(len(command) - 2) if command[i].startswith("--")}
    assert ("--ro-bind", "/usr") in pairs and ("--symlink", "/bin") in pairs and ("--bind", "/tmp") in pairs
    assert ("--bind", "/" + REPO.parts[1]) in pairs, "a path argument's top folder is shown"
    assert ("--bind", "/opt") in pairs and ("--ro-bind", "/opt") not in pairs, "the host's /opt replaces the root's"
    assert command[-6:] == ["caffe", "test", "-model", net, "-weights", "/opt/w.caffemodel"]
    assert "--clearenv" in command and command[command.index("PATH") + 1].startswith("/usr/local/sbin")
    with pytest.raises(HarrisonError, match="/usr"):
        caffe_root.bwrap_command(root, ["caffe", "test", "-model", "/usr/share/net.prototxt"], Path("/tmp"))


def test_make_weights_stage_writes_then_skips(caffe_engine, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert cli.main(["make-weights", "--workdir", str(workdir), "--engine", "caffe"]) == 0
    made = capsys.readouterr().out
    assert "object: wrote" in made and "scene: wrote" in made
    first = sha256(workdir / "weights/object.caffemodel")
    assert cli.main(["make-weights", "--workdir", str(workdir), "--engine", "caffe", "--feature", "object"]) == 0
    assert "object.caffemodel is current (seed 11)" in capsys.readouterr().out
    assert sha256(workdir / "weights/object.caffemodel") == first
    other = tmp_path / "other.caffemodel"
    assert cli.main(["make-weights", "--net", str(DEMO_NETS["object"]), "--out", str(other), "--seed", "11"]) == 0
    assert sha256(other) == first, "the config's init_seed is the seed Caffe is given"
    assert cli.main(["make-weights", "--workdir", str(workdir), "--feature", "nope"]) == 2


def test_doctor_reports_what_is_found(caffe_engine, tmp_path, capsys):
    code = cli.main(["doctor", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"^caffe +ok +Caffe 1\.0\.0, CPU, BLAS ", out, re.M)
    assert re.search(r"^disk +ok +[\d.]+ GB free", out, re.M)
    assert code == (0 if "essentials missing" not in out else 1)
