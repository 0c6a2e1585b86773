"""Speed of the torch engine against real Caffe, side by side in one run, with the machine's details.

Figures (each for both engines, and the ratio torch/caffe):

* VGG-16 fc7 forward: images per second at input 224 through ``engine.load_net(net, weights).forward``;
  both nets are loaded at once and the timed batches alternate between the engines, so that load from
  other processes falls on both alike.
* VGG-16 extraction from JPEG: the extract stage's pipeline (``harrison.features.extract``: decoding and
  preprocessing on a thread pool, overlapping the forward pass) over synthetic JPEGs.
* Classifier training: iterations per second at the paper's layer sizes (prototxt/classifier) on synthetic
  HDF5 features, through ``engine.train`` on a short copy of the solver; steady state from the Caffe-format
  log's timestamps, start-up (call -> first iteration) and the wall time around it.

The SGEMM rate of this machine (torch.mm) and the multiply-adds of each net (from the prototxt) give the
rates that no float32 engine can pass without a faster convolution algorithm; they are printed beside
the figures. Weights, images, features and logs go to bench/out/ (git-ignored); the figures to
bench/out/speed.json.

    .venv/bin/python bench/bench_speed.py [--quick] [--gpu N] [--engines torch,caffe]
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harrison import caffelog  # noqa: E402
from harrison.classifier_data import output_layer  # noqa: E402
from harrison.engines import Engine, NetRunner, get_engine  # noqa: E402
from harrison.errors import HarrisonError  # noqa: E402
from harrison.features import extract  # noqa: E402
from harrison.files import write_json  # noqa: E402
from harrison.images import PreprocessSpec, load_preprocess_spec  # noqa: E402
from harrison.proto import caffe_pb2  # noqa: E402
from harrison.proto.io import read_net, read_solver, upgrade_net, write_prototxt  # noqa: E402

OUT = REPO / "bench" / "out"
VGG_DIR = REPO / "prototxt" / "vgg16_object"
SCENE_DIR = REPO / "prototxt" / "vgg16_scene"
CLASSIFIER_DIR = REPO / "prototxt" / "classifier"
CLASSIFIER_SOLVER = "solver_object_scene.prototxt"
TARGETS = {"vgg16_forward": 2.2, "classifier_train": 1.25}
"""Issue 4's targets for torch/caffe."""

FULL = {"batch": 10, "rounds": 6, "images": 60, "rows": 3000, "iters": 40, "skip": 5, "classes": 1000, "train_runs": 2}
QUICK = {"batch": 2, "rounds": 1, "images": 4, "rows": 300, "iters": 8, "skip": 2, "classes": 1000, "train_runs": 1}


# --------------------------------------------------------------------------------------------- machine


def machine_facts() -> dict:
    """CPU model, cores, memory, load and the settings that decide the thread counts."""
    cpu: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpu.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(cpu.get("flags", "").split())
    vector = next((name for name in ("avx512f", "avx2", "avx", "sse4_2") if name in flags), "unknown")
    model = cpu.get("model name", platform.processor())
    if "cpu family" in cpu:
        model += f" (family {cpu['cpu family']}, model {cpu.get('model', '?')}, {vector.upper()})"
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "thread_env": {name: os.environ[name] for name in
                       ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "HARRISON_THREADS")
                       if name in os.environ},
    }


def torch_facts(gpu: int | None) -> dict:
    """torch's version, threads, BLAS and convolution libraries, and the device."""
    import torch

    config = torch.__config__.show()
    libraries = [re.sub(r"\s*\(Git Hash.*", "", line.strip(" -")) for line in config.splitlines()
                 if "Math Kernel Library" in line or "MKL-DNN" in line or "OpenBLAS" in line]
    facts = {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": "; ".join(libraries) or "unknown",
        "device": "cpu",
    }
    if gpu is not None and torch.cuda.is_available():
        facts["device"] = f"cuda:{gpu} {torch.cuda.get_device_name(gpu)}"
        facts["cuda"] = torch.version.cuda
        facts["cudnn"] = str(torch.backends.cudnn.version())
    return facts


def gemm_rate(gpu: int | None, size: int = 2048, repeats: int = 5) -> float:
    """Float32 GEMM rate of torch.mm (GFLOP/s, 2 per multiply-add) on a square ``size`` problem."""
    import torch

    device = torch.device("cpu" if gpu is None else f"cuda:{gpu}")
    generator = torch.Generator(device=device).manual_seed(0)
    left = torch.randn(size, size, device=device, generator=generator)
    right = torch.randn(size, size, device=device, generator=generator)
    sync = (lambda: torch.cuda.synchronize(device)) if gpu is not None else (lambda: None)
    torch.mm(left, right)
    sync()
    best = math.inf
    for _ in range(repeats):
        began = time.perf_counter()
        torch.mm(left, right)
        sync()
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 / best / 1e9


def multiply_adds(net_path: Path, batch: int = 1, *, data_width: int = 0, train: bool = False) -> int:
    """Multiply-adds of the Convolution and InnerProduct layers of ``net_path`` for one batch.

    Shapes run from the Input tops (with ``batch`` rows) or from a data layer's first top (its own batch
    size x ``data_width``).
    With ``train`` (TRAIN phase) the backward pass counts too: the weight gradient of every such layer and
    the input gradient of those that do not read a data layer.
    """
    net = upgrade_net(read_net(net_path))
    phase = caffe_pb2.TRAIN if train else caffe_pb2.TEST
    shapes: dict[str, tuple[int, ...]] = {}
    data_tops: set[str] = set()
    total = 0
    for layer in net.layer:
        if not _in_phase(layer, phase):
            continue
        if layer.type == "Input":
            shapes.update({top: (batch, *shape.dim[1:]) for top, shape in zip(layer.top, layer.input_param.shape)})
            continue
        if layer.type == "HDF5Data":
            shapes[layer.top[0]] = (layer.hdf5_data_param.batch_size, data_width)
            data_tops.add(layer.top[0])
            continue
        if not layer.bottom or layer.bottom[0] not in shapes:
            continue
        bottom = shapes[layer.bottom[0]]
        macs = 0
        if layer.type == "Convolution":
            param = layer.convolution_param
            kernel = _pair(param.kernel_size, param.kernel_h, param.kernel_w, 1)
            pad = _pair(param.pad, param.pad_h, param.pad_w, 0)
            stride = _pair(param.stride, param.stride_h, param.stride_w, 1)
            dilation = _pair(param.dilation, 0, 0, 1)
            size = [(bottom[2 + i] + 2 * pad[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in (0, 1)]
            out = (bottom[0], param.num_output, *size)
            macs = int(np.prod(out)) * bottom[1] // max(param.group, 1) * kernel[0] * kernel[1]
        elif layer.type == "InnerProduct":
            param = layer.inner_product_param
            axis = param.axis if param.HasField("axis") else 1
            out = (*bottom[:axis], param.num_output)
            macs = int(np.prod(bottom)) * param.num_output
        elif layer.type == "Pooling":
            out = _pooled(layer.pooling_param, bottom)
        else:
            out = bottom
        for top in layer.top:
            shapes[top] = out
        passes = 1 + (train and 1) + (train and layer.bottom[0] not in data_tops)
        total += macs * passes
    return total


def _pooled(param: caffe_pb2.PoolingParameter, bottom: tuple[int, ...]) -> tuple[int, ...]:
    """Caffe's pooled shape: ceil rounding, and no window that starts in the padding."""
    if param.global_pooling:
        return (*bottom[:2], 1, 1)
    kernel = _pair(param.kernel_size, param.kernel_h, param.kernel_w, 1)
    pad = _pair(param.pad, param.pad_h, param.pad_w, 0)
    stride = _pair(param.stride, param.stride_h, param.stride_w, 1)
    size = []
    for i in (0, 1):
        length = math.ceil((bottom[2 + i] + 2 * pad[i] - kernel[i]) / stride[i]) + 1
        if pad[i] and (length - 1) * stride[i] >= bottom[2 + i] + pad[i]:
            length -= 1
        size.append(length)
    return (*bottom[:2], *size)


def _pair(value, height: int, width: int, default: int) -> tuple[int, int]:
    """(h, w) of a Caffe size field that may be repeated, single, or given as separate _h and _w."""
    if height or width:
        return height, width
    values = [value] if isinstance(value, int) else list(value)
    values = [v for v in values if v] or [default]
    return values[0], values[-1]


def _in_phase(layer: caffe_pb2.LayerParameter, phase: int) -> bool:
    if layer.include:
        return any(rule.phase == phase for rule in layer.include if rule.HasField("phase"))
    return not any(rule.HasField("phase") and rule.phase == phase for rule in layer.exclude)


# --------------------------------------------------------------------------------------------- VGG-16


def vgg_weights(engine: Engine, net: Path, seed: int = 0) -> Path:
    """Weights for ``net`` made once into bench/out/ (reused while the prototxt is unchanged).

    A deploy net names no fillers (its weights come from the authors' file), which would make every
    weight zero; so ``engine`` fills a copy whose Convolution and InnerProduct layers without a
    weight_filler get Caffe's msra filler, and the activations stay of ordinary size through fc7.
    """
    out = OUT / f"{net.parent.name}_msra_seed{seed}.caffemodel"
    if not out.exists() or out.stat().st_mtime < net.stat().st_mtime:
        filled = upgrade_net(read_net(net))
        for layer in filled.layer:
            param = {"Convolution": layer.convolution_param, "InnerProduct": layer.inner_product_param}.get(layer.type)
            if param is not None and not param.HasField("weight_filler"):
                param.weight_filler.type = "msra"
        copy = write_prototxt(OUT / f"{net.parent.name}_msra.prototxt", filled)
        print(f"making {out} with the {engine.name} engine's fillers", file=sys.stderr)
        engine.init_weights(copy, out, seed)
    return out


def bench_forward(runners: dict[str, NetRunner], input_blob: str, blob: str, batch: int, rounds: int,
                  input_shape: Sequence[int]) -> dict[str, dict]:
    """Images per second of each runner's forward to ``blob``: one warm-up batch, then ``rounds`` timed
    batches per runner, alternating between the runners. The rate is that of the median batch (a batch
    slowed by other processes moves it less than the mean); the mean and the best are kept too. With the
    CPU time, system time and minor page faults they cost (this process and its workers together: the
    other engine idles meanwhile)."""
    generator = np.random.default_rng(0)
    data = (generator.standard_normal((batch, *input_shape)) * 50).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in runners}
    used: dict[str, np.ndarray] = {name: np.zeros(3) for name in runners}
    for name, runner in runners.items():
        runner.forward({input_blob: data}, [blob])
    for _ in range(rounds):
        for name, runner in runners.items():
            before = cpu_usage()
            began = time.perf_counter()
            runner.forward({input_blob: data}, [blob])
            times[name].append(time.perf_counter() - began)
            used[name] += cpu_usage() - before
    return {name: {"images_per_s": batch / float(np.median(spent)),
                   "mean_images_per_s": batch * len(spent) / sum(spent),
                   "best_images_per_s": batch / min(spent),
                   "cpu_s_per_image": used[name][0] / (batch * rounds),
                   "system_s_per_image": used[name][1] / (batch * rounds),
                   "minor_faults_per_batch": used[name][2] / rounds,
                   "seconds_per_batch": [round(t, 4) for t in spent]}
            for name, spent in times.items()}


def cpu_usage() -> np.ndarray:
    """(CPU seconds, system CPU seconds, minor page faults) so far of this process, its finished children
    and its live descendants (the Caffe worker)."""
    own, done = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = np.array([own.ru_utime + own.ru_stime + done.ru_utime + done.ru_stime,
                      own.ru_stime + done.ru_stime, own.ru_minflt + done.ru_minflt], dtype=np.float64)
    tick = os.sysconf("SC_CLK_TCK")
    for child in psutil.Process().children(recursive=True):
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        minor, user, system = int(fields[7]), int(fields[11]) / tick, int(fields[12]) / tick
        total += (user + system, system, minor)
    return total


def synthetic_jpegs(folder: Path, count: int, size: tuple[int, int] = (640, 640), seed: int = 0) -> list[Path]:
    """``count`` photo-like JPEGs (smooth colour fields with texture), made once."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{index:05d}.jpg" for index in range(count)]
    generator = np.random.default_rng(seed)
    for path in paths:
        if path.exists():
            continue
        coarse = generator.uniform(0, 255, (size[0] // 32, size[1] // 32, 3)).astype(np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize(size[::-1], Image.BICUBIC), dtype=np.float32)
        texture = generator.normal(0, 12, (*size, 3))
        Image.fromarray(np.clip(field + texture, 0, 255).astype(np.uint8)).save(path, quality=90)
    return paths


def bench_extraction(runner: NetRunner, spec: PreprocessSpec, paths: list[Path], batch: int, out: Path) -> dict:
    """Images per second of the extract stage's pipeline (decode + preprocess overlapped with forward)."""
    for stale in (out, out.with_name(out.name + ".partial")):
        stale.unlink(missing_ok=True)

    def forward(data: np.ndarray) -> np.ndarray:
        return runner.forward({spec.input_blob: data}, [spec.feature_blob])[spec.feature_blob]

    began = time.perf_counter()
    done = extract(forward, spec, paths, [path.name for path in paths], out, {"on_bad_image": "fail"}, batch_size=batch)
    spent = time.perf_counter() - began
    return {"images_per_s": done.rows / spent, "images": done.rows, "seconds": round(spent, 3)}


def features_difference(folder: Path, names: Sequence[str]) -> float | None:
    """max |torch - caffe| / max |caffe| over the extracted fc7 features: both engines did the same work."""
    if not {"torch", "caffe"} <= set(names):
        return None
    with h5py.File(folder / "torch.h5", "r") as mine, h5py.File(folder / "caffe.h5", "r") as reference:
        ours, theirs = mine["features"][:], reference["features"][:]
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), np.finfo(np.float32).tiny))


def bench_decoding(spec: PreprocessSpec, paths: list[Path]) -> dict:
    """Decode + preprocess rate alone: one thread, and the extract stage's thread pool without a net."""
    from harrison.images import load_batches, load_rgb, preprocess

    began = time.perf_counter()
    for path in paths:
        preprocess(load_rgb(path), spec)
    single = len(paths) / (time.perf_counter() - began)
    began = time.perf_counter()
    for _ in load_batches(paths, spec, 10):
        pass
    pooled = len(paths) / (time.perf_counter() - began)
    return {"one_thread_images_per_s": single, "pool_images_per_s": pooled}


# --------------------------------------------------------------------------------------------- classifier


def feature_width(net_dir: Path) -> int:
    """Width of a feature net's feature blob (fc7), read from its deploy prototxt and preprocess.yaml."""
    spec = load_preprocess_spec(net_dir / "preprocess.yaml")
    for layer in upgrade_net(read_net(net_dir / "deploy.prototxt")).layer:
        if spec.feature_blob in layer.top and layer.type == "InnerProduct":
            return layer.inner_product_param.num_output
    raise HarrisonError(f"{net_dir / 'deploy.prototxt'}: no InnerProduct layer makes {spec.feature_blob}")


def synthetic_features(folder: Path, rows: int, width: int, classes: int, seed: int = 0) -> Path:
    """An HDF5Data source list with one file of fc7-like features (non-negative, half zero) and multi-hot
    labels of one to five classes per row."""
    folder.mkdir(parents=True, exist_ok=True)
    data_file = folder / f"features_{rows}x{width}_{classes}.h5"
    if not data_file.exists():
        generator = np.random.default_rng(seed)
        labels = np.zeros((rows, classes), dtype=np.float32)
        for row in range(rows):
            labels[row, generator.choice(classes, generator.integers(1, 6), replace=False)] = 1
        with h5py.File(data_file.with_suffix(".tmp"), "w") as handle:
            handle["data"] = np.maximum(generator.standard_normal((rows, width), dtype=np.float32), 0) * np.float32(0.2)
            handle["label"] = labels
        data_file.with_suffix(".tmp").rename(data_file)
    source = folder / "source.txt"
    source.write_text(f"{data_file}\n", encoding="utf-8")
    return source


def classifier_solver(folder: Path, source: Path, classes: int, iters: int, gpu: int | None) -> tuple[Path, Path]:
    """A short copy of the classifier's solver and net reading ``source``: ``iters`` iterations, display
    every iteration, no testing, one snapshot at the end; every other number as in prototxt/classifier."""
    solver = read_solver(CLASSIFIER_DIR / CLASSIFIER_SOLVER)
    net_source = CLASSIFIER_DIR / solver.net
    net = upgrade_net(read_net(net_source))
    for layer in net.layer:
        if layer.type == "HDF5Data":
            layer.hdf5_data_param.source = str(source)
    output_layer(net, net_source).inner_product_param.num_output = classes
    net_path = write_prototxt(folder / "train_test.prototxt", net)
    solver.net = str(net_path)
    solver.max_iter = iters
    solver.display = 1
    solver.average_loss = 1
    solver.snapshot = 0
    solver.snapshot_prefix = str(folder / "snapshots" / "bench")
    solver.test_initialization = False
    solver.test_interval = iters + 1
    solver.solver_mode = caffe_pb2.SolverParameter.CPU if gpu is None else caffe_pb2.SolverParameter.GPU
    (folder / "snapshots").mkdir(exist_ok=True)
    return write_prototxt(folder / "solver.prototxt", solver), net_path


_GLOG_TIME = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d\.\d+) ")


def display_times(log: Path, day: datetime.date) -> list[tuple[int, float]]:
    """(iteration, POSIX time) of each display line of a Caffe-format log written on ``day`` (local time)."""
    events = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        event = caffelog.parse_line(line)
        stamp = _GLOG_TIME.match(line)
        if isinstance(event, caffelog.Display) and not event.final and stamp:
            month, mday, hour, minute, second = stamp.groups()
            whole = datetime.datetime(day.year, int(month), int(mday), int(hour), int(minute))
            events.append((event.iteration, whole.timestamp() + float(second)))
    return events


def bench_training(engine: Engine, solver: Path, iters: int, skip: int, log: Path) -> dict:
    """Start-up (call -> the display line of iteration 0, so process start, net set-up, data loading and
    the first iteration), steady iterations per second (from the log's timestamps, iteration ``skip`` on:
    the median iteration, and the mean), the
    tail (last display -> return: the final snapshot and exit), the wall time of the whole call and the
    CPU time, system time and minor page faults it cost."""
    for old in (solver.parent / "snapshots").glob("bench_iter_*"):
        old.unlink()
    before = cpu_usage()
    began = time.time()
    engine.train(solver, log=log)
    ended = time.time()
    used = cpu_usage() - before
    wall = ended - began
    events = display_times(log, datetime.date.fromtimestamp(began))
    steady = [(n, t) for n, t in events if n >= skip]
    result = {"iterations": iters, "wall_s": wall, "wall_iters_per_s": iters / wall, "cpu_s": used[0],
              "system_s": used[1], "minor_faults": used[2], "log": str(log)}
    if len(steady) >= 2:
        (first_n, first_t), (last_n, last_t) = steady[0], steady[-1]
        per_iteration = [(t1 - t0) / (n1 - n0) for (n0, t0), (n1, t1) in zip(steady, steady[1:])]
        result["steady_iters_per_s"] = 1 / float(np.median(per_iteration))
        result["mean_iters_per_s"] = (last_n - first_n) / (last_t - first_t)
    if events:
        startup = events[0][1] - began
        if 0 <= startup <= wall:  # the log's clock is this process's local time
            result["startup_s"] = startup
            result["tail_s"] = ended - events[-1][1]
    return result


def data_batch(net_path: Path) -> int:
    """The batch size of the first HDF5Data layer of a train net."""
    for layer in read_net(net_path).layer:
        if layer.type == "HDF5Data":
            return layer.hdf5_data_param.batch_size
    raise HarrisonError(f"{net_path}: no HDF5Data layer")


# --------------------------------------------------------------------------------------------- report

ROWS = [
    ("forward", "images_per_s", "VGG-16 fc7 forward, batch {batch} (images/s)", "vgg16_forward"),
    ("forward", "mean_images_per_s", "  mean over the batches (images/s)", None),
    ("forward", "cpu_s_per_image", "  CPU seconds per image", None),
    ("forward", "system_s_per_image", "  of which system (kernel) seconds", None),
    ("forward", "minor_faults_per_batch", "  minor page faults per batch", None),
    ("forward", "load_s", "  net load time (s)", None),
    ("extraction", "images_per_s", "VGG-16 extraction from JPEG (images/s)", None),
    ("training", "steady_iters_per_s", "classifier steady, batch {train_batch} (iterations/s)", "classifier_train"),
    ("training", "mean_iters_per_s", "  mean from iteration {skip} on (iterations/s)", None),
    ("training", "wall_iters_per_s", "classifier incl. start-up and snapshot (it/s)", None),
    ("training", "startup_s", "classifier start-up to iteration 0 (s)", None),
    ("training", "tail_s", "classifier final snapshot and exit (s)", None),
    ("training", "cpu_s", "  CPU seconds, whole call", None),
    ("training", "system_s", "  of which system (kernel) seconds", None),
    ("training", "minor_faults", "  minor page faults, whole call", None),
]


def ratios(report: dict) -> dict[str, float]:
    """torch/caffe for each rate both engines measured (larger is faster for torch)."""
    out = {}
    for section, key, _, _ in ROWS:
        values = report.get(section, {})
        torch_value = values.get("torch", {}).get(key)
        caffe_value = values.get("caffe", {}).get(key)
        if key.endswith("_per_s") and torch_value and caffe_value:
            out[f"{section}.{key}"] = torch_value / caffe_value
    return out


def render(report: dict) -> str:
    """The human-readable report: machine, libraries, limits, then one row per figure."""
    machine, settings, limits = report["machine"], report["settings"], report["limits"]
    lines = [
        f"harrison speed benchmark, {report['date']}",
        f"command: {report['command']}",
        f"machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs ({machine['physical_cores']} cores, "
        f"{machine['cpus_usable']} usable), {machine['memory_gib']} GiB; load average "
        f"{' '.join(f'{v:.2f}' for v in report['load_average_start'])} at the start, "
        f"{' '.join(f'{v:.2f}' for v in report['load_average_end'])} at the end",
        f"thread settings: {machine['thread_env'] or 'none (each library uses every usable CPU)'}",
    ]
    torch_facts = report["torch"]
    lines.append(f"torch {torch_facts['version']} on {torch_facts['device']}: {torch_facts['threads']} threads, "
                 f"{torch_facts['cpu_capability']}, {torch_facts['blas']}")
    for name, facts in report["engines"].items():
        shown = {key: ", ".join(Path(part.strip()).name for part in value.split(",")) if key == "blas" else value
                 for key, value in facts.items() if key != "engine"}
        lines.append(f"engine {name}: " + "; ".join(f"{key} {value}" for key, value in shown.items()))
    for name, why in report["skipped"].items():
        lines.append(f"engine {name}: not run ({why})")
    lines.append(
        f"float32 GEMM (torch.mm 2048^3): {limits['gemm_gflops']:.0f} GFLOP/s, so at most "
        f"{limits['vgg16_images_per_s']:.1f} VGG-16 images/s ({limits['vgg16_gmacs_per_image']:.2f} GMAC each) and "
        f"{limits['classifier_iters_per_s']:.1f} classifier iterations/s ({limits['classifier_gmacs_per_iter']:.2f} GMAC "
        "each, forward and backward) without a faster algorithm than direct GEMM")
    if "decoding" in report:
        decoding = report["decoding"]
        lines.append(f"JPEG decode + preprocess alone: {decoding['one_thread_images_per_s']:.1f} images/s on one thread, "
                     f"{decoding['pool_images_per_s']:.1f} images/s on the extract stage's thread pool")
    if report.get("features_difference") is not None:
        lines.append(f"extracted fc7, torch against caffe: max |difference| / max |caffe| = {report['features_difference']:.1e}")
    lines.append("")
    header = f"{'figure':<52} {'torch':>9} {'caffe':>9} {'torch/caffe':>12} {'target':>8}"
    lines += [header, "-" * len(header)]
    ratio = ratios(report)
    for section, key, label, target_key in ROWS:
        values = report.get(section, {})
        cells = []
        for name in ("torch", "caffe"):
            value = values.get(name, {}).get(key)
            if isinstance(value, (int, float)):
                cells.append(f"{value:9.0f}" if abs(value) >= 1000 else f"{value:9.3g}" if abs(value) < 1 else f"{value:9.2f}")
            else:
                cells.append(f"{values.get(name, {}).get('error', '-')[:9]:>9}")
        factor = ratio.get(f"{section}.{key}")
        target = TARGETS.get(target_key) if target_key else None
        verdict = "" if target is None or factor is None else (" met" if factor >= target else " MISSED")
        lines.append(f"{label.format(**settings):<52} {cells[0]} {cells[1]} "
                     f"{f'{factor:.2f}x' if factor else '-':>12} {f'>= {target}x' if target else '':>8}{verdict}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: tiny batches and few iterations")
    parser.add_argument("--gpu", type=int, default=None, metavar="N", help="run both engines on CUDA device N")
    parser.add_argument("--engines", default="torch,caffe", help="comma-separated engines to run (default: torch,caffe)")
    parser.add_argument("--out", type=Path, default=OUT / "speed.json", help="the JSON report (default: bench/out/speed.json)")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    OUT.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "settings": settings,
        "machine": machine_facts(),
        "load_average_start": list(os.getloadavg()),
        "engines": {},
        "skipped": {},
        "targets": TARGETS,
    }
    engines: dict[str, Engine] = {}
    for name in args.engines.split(","):
        try:
            engines[name], _ = get_engine(name, args.gpu)
            report["engines"][name] = engines[name].describe()
        except HarrisonError as exc:
            report["skipped"][name] = str(exc).splitlines()[0]
    if not engines:
        raise HarrisonError(f"no engine of {args.engines} can run here: {report['skipped']}")
    report["torch"] = torch_facts(args.gpu)  # after the torch engine has set its thread count

    vgg_net = VGG_DIR / "deploy.prototxt"
    spec = load_preprocess_spec(VGG_DIR / "preprocess.yaml")
    width = feature_width(VGG_DIR) + feature_width(SCENE_DIR)
    work = OUT / "classifier"
    source = synthetic_features(work, settings["rows"], width, settings["classes"])
    solver, train_net = classifier_solver(work, source, settings["classes"], settings["iters"], args.gpu)
    settings["train_batch"] = data_batch(train_net)
    gemm = gemm_rate(args.gpu)
    vgg_macs = multiply_adds(vgg_net)
    train_macs = multiply_adds(train_net, data_width=width, train=True)
    report["limits"] = {
        "gemm_gflops": gemm,
        "vgg16_gmacs_per_image": vgg_macs / 1e9,
        "vgg16_images_per_s": gemm / (2 * vgg_macs / 1e9),
        "classifier_gmacs_per_iter": train_macs / 1e9,
        "classifier_iters_per_s": gemm / (2 * train_macs / 1e9),
    }

    weights = vgg_weights(engines.get("caffe") or next(iter(engines.values())), vgg_net)
    runners: dict[str, NetRunner] = {}
    report["forward"], report["extraction"], report["training"] = {}, {}, {}
    try:
        for name, engine in engines.items():
            began = time.perf_counter()
            runners[name] = engine.load_net(vgg_net, weights)
            report["forward"].setdefault(name, {})["load_s"] = time.perf_counter() - began
        timed = bench_forward(runners, spec.input_blob, spec.feature_blob, settings["batch"], settings["rounds"],
                              (3, *spec.input_size))
        for name, figures in timed.items():
            report["forward"][name].update(figures)
        paths = synthetic_jpegs(OUT / "jpegs", settings["images"])
        report["decoding"] = bench_decoding(spec, paths)
        for name, runner in runners.items():
            report["extraction"][name] = bench_extraction(runner, spec, paths, settings["batch"], OUT / "extract" / f"{name}.h5")
        report["features_difference"] = features_difference(OUT / "extract", list(runners))
    finally:
        for runner in runners.values():
            runner.close()

    runs: dict[str, list[dict]] = {name: [] for name in engines}
    for run in range(settings["train_runs"]):
        for name, engine in engines.items():
            try:
                runs[name].append(bench_training(engine, solver, settings["iters"], settings["skip"], work / f"{name}_{run}.log"))
            except HarrisonError as exc:
                runs[name].append({"error": str(exc).splitlines()[0]})
    for name, done in runs.items():
        best = max(done, key=lambda figures: figures.get("steady_iters_per_s", 0.0))
        report["training"][name] = {**best, "runs": done}
    report["load_average_end"] = list(os.getloadavg())
    report["ratios"] = ratios(report)
    print(render(report))
    write_json(args.out, report)
    print(f"\nwritten {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HarrisonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
