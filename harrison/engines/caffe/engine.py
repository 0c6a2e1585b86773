"""Real BVLC Caffe as an engine: pycaffe in one long-lived worker for forwards, ``caffe train`` for solvers.

The worker (``worker.py``) runs under the Caffe's own python3 (inside the Caffe root when that is how
Caffe was found) and talks to this process over pipes; see its docstring for the protocol. Relative paths
inside a net or solver resolve against the folder of that file, because Caffe runs there.
"""
from __future__ import annotations

import collections
import io
import json
import math
import os
import re
import signal
import subprocess
import threading
import weakref
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from harrison import caffelog
from harrison.engines.base import Engine, NetRunner, TrainResult
from harrison.engines.caffe.root import CaffeInstall, find_caffe
from harrison.engines.caffe.worker import npy_bytes, read_frame, write_frame
from harrison.errors import HarrisonError
from harrison.files import atomic_path
from harrison.proto import caffe_pb2
from harrison.proto.io import read_solver

# The worker's source goes to ``python3 -c``, so it needs no path inside a root or container.
WORKER = ["python3", "-c", Path(__file__).resolve().with_name("worker.py").read_text(encoding="utf-8")]
QUIET = {"GLOG_minloglevel": "2"}
TRAIN_ENV = {"GLOG_logtostderr": "1"}
STDERR_LINES = 40


class CaffeEngine(Engine):
    """BVLC Caffe 1.0 found by ``harrison.engines.caffe.root.find_caffe``, on CPU or GPU ``gpu``."""

    name = "caffe"
    _checked: dict[tuple, tuple[bool, str]] = {}

    def __init__(self, gpu: int | None, install: CaffeInstall, version: str):
        self.gpu = gpu
        self.install = install
        self.version = version
        self._facts: dict[str, str] | None = None

    @classmethod
    def available(cls, gpu: int | None) -> tuple[bool, str]:
        key = (gpu, os.environ.get("HARRISON_CAFFE_PREFIX"), os.environ.get("HARRISON_CAFFE_ROOT"))
        if key not in cls._checked:
            try:
                install, version = find_caffe()
                if gpu is not None:
                    _check_gpu(install, gpu)
                cls._checked[key] = (True, f"Caffe {version} ({install.kind}: {install.where})")
            except HarrisonError as exc:
                cls._checked[key] = (False, str(exc))
        return cls._checked[key]

    @classmethod
    def create(cls, gpu: int | None) -> "CaffeEngine":
        found, why = cls.available(gpu)
        if not found:
            raise HarrisonError(why)
        install, version = find_caffe()
        return cls(gpu, install, version)

    def describe(self) -> dict[str, str]:
        if self._facts is None:
            args = [*WORKER, "info", *([str(self.gpu)] if self.gpu is not None else [])]
            done = self._run(args, cwd="/tmp")
            facts = json.loads(done.stdout.strip().splitlines()[-1])
            self._facts = {
                "engine": "caffe",
                "version": str(facts["version"]),
                "mode": facts["mode"],
                "blas": facts["blas"],
                "found": self.install.kind,
                "where": self.install.where,
            }
        return dict(self._facts)

    def load_net(self, net: str | os.PathLike, weights: str | os.PathLike | None) -> NetRunner:
        net = _existing(net, "net")
        args = [*WORKER, "serve", str(net), str(_existing(weights, "weights")) if weights else "-"]
        if self.gpu is not None:
            args.append(str(self.gpu))
        return CaffeNetRunner(self._popen(args, cwd=net.parent, env=QUIET), f"{net}" + (f" with {weights}" if weights else ""))

    def init_weights(self, net: str | os.PathLike, out: str | os.PathLike, seed: int) -> Path:
        net = _existing(net, "net")
        with atomic_path(out, suffix=".caffemodel") as tmp:
            self._run([*WORKER, "init", str(net), str(tmp), str(int(seed))], cwd=net.parent)
        return Path(out)

    def train(
        self,
        solver: str | os.PathLike,
        *,
        log: str | os.PathLike,
        resume: str | os.PathLike | None = None,
        weights: str | os.PathLike | None = None,
    ) -> TrainResult:
        solver = _existing(solver, "solver")
        if resume and weights:
            raise HarrisonError("give either resume (a .solverstate) or weights (a .caffemodel), not both")
        param = solver_outputs(solver)
        prefix = solver.parent / param.snapshot_prefix
        args = ["caffe", "train", "-solver", str(solver)]
        if resume:
            args += ["-snapshot", str(_existing(resume, "solver state"))]
        if weights:
            args += ["-weights", str(_existing(weights, "weights"))]
        if self.gpu is not None:
            args += ["-gpu", str(self.gpu)]
        log = Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        process = self._popen(args, cwd=solver.parent, env=TRAIN_ENV, merge_stderr=True)
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        try:
            with open(log, "a" if resume else "w", encoding="utf-8") as handle, \
                    tqdm(total=param.max_iter, desc=f"caffe train {solver.name}", unit="iter") as bar:
                iteration = 0
                for line in process.stdout:  # type: ignore[union-attr]
                    handle.write(line)
                    handle.flush()
                    tail.append(line.rstrip())
                    event = caffelog.parse_line(line)
                    if isinstance(event, caffelog.Display) and not event.final:
                        iteration = event.iteration
                        bar.update(iteration - bar.n)
                    loss = _loss_of(event)
                    if loss is not None and not math.isfinite(loss):
                        _stop(process)
                        seen = f"at iteration {iteration}" if param.display <= 1 else \
                            f"by iteration {iteration} (Caffe shows the loss every {param.display} iterations)"
                        raise HarrisonError(
                            f"{solver}: training diverged {seen} (loss = {loss}); lower base_lr "
                            f"or check the inputs; the log is {log}, snapshots written before it are kept"
                        )
            code = process.wait()
        finally:
            _stop(process)
        if code != 0:
            raise HarrisonError(f"caffe train -solver {solver} failed (exit {code}); see {log}:\n" + _last_lines("\n".join(tail)))
        suffix = ".h5" if param.snapshot_format == caffe_pb2.SolverParameter.HDF5 else ""
        final = Path(f"{prefix}_iter_{param.max_iter}.caffemodel{suffix}")
        state = Path(f"{prefix}_iter_{param.max_iter}.solverstate{suffix}")
        if not final.exists():
            raise HarrisonError(f"caffe train finished but {final} is missing; is snapshot_after_train false in {solver}?")
        return TrainResult(final, state if state.exists() else None, param.max_iter, log)

    def _popen(self, args: Sequence[str], *, cwd: Path, env: dict[str, str], merge_stderr: bool = False) -> subprocess.Popen:
        """Start ``args`` with this Caffe: stdin/stdout pipes for the worker, or one merged text pipe for ``caffe train``."""
        command = self.install.command(args, cwd, gpu=self.gpu is not None, env=env)
        try:
            return subprocess.Popen(
                command, cwd=cwd, env=self.install.environment(env), start_new_session=True,
                stdin=None if merge_stderr else subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                text=merge_stderr, errors="replace" if merge_stderr else None, bufsize=1 if merge_stderr else -1,
            )
        except OSError as exc:
            raise HarrisonError(f"cannot start Caffe ({command[0]}): {exc.strerror}; run scripts/install_caffe.sh") from exc

    def _run(self, args: Sequence[str], *, cwd: str | os.PathLike) -> subprocess.CompletedProcess:
        command = self.install.command(args, cwd, gpu=self.gpu is not None, env=QUIET)
        done = subprocess.run(command, cwd=cwd, env=self.install.environment(QUIET), capture_output=True, text=True)
        if done.returncode != 0:
            raise HarrisonError(f"Caffe failed on `{' '.join(args[3:])}`:\n{_last_lines(done.stderr)}")
        return done


class CaffeNetRunner(NetRunner):
    """A net held by one worker process; requests go over its stdin, replies come back on its stdout."""

    def __init__(self, process: subprocess.Popen, what: str):
        self._process = process
        self._what = what
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._reader.start()
        self._finalizer = weakref.finalize(self, _stop, process)
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._receive()

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        if self._shapes is None:
            header, _ = self._request({"op": "shapes"}, [])
            self._shapes = {name: tuple(shape) for name, shape in header["shapes"].items()}
        return dict(self._shapes)

    def forward(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        names = list(inputs)
        arrays = [np.ascontiguousarray(inputs[name], dtype=np.float32) for name in names]
        _, results = self._request({"op": "forward", "inputs": names, "outputs": list(outputs)}, arrays)
        return dict(zip(outputs, results))

    def close(self) -> None:
        self._finalizer()

    def _request(self, header: dict, arrays: list[np.ndarray]) -> tuple[dict, list[np.ndarray]]:
        if self._process.poll() is not None:
            self._died()
        try:
            pipe = self._process.stdin
            write_frame(pipe, json.dumps(header).encode())
            for array in arrays:
                write_frame(pipe, npy_bytes(array))
            pipe.flush()
        except (BrokenPipeError, OSError):
            self._died()
        return self._receive()

    def _receive(self) -> tuple[dict, list[np.ndarray]]:
        frame = read_frame(self._process.stdout)
        if frame is None:
            self._died()
        reply = json.loads(frame.decode())
        if not reply["ok"]:
            raise HarrisonError(f"Caffe refused a request on {self._what}: {reply['error']}")
        arrays = []
        for _ in reply.get("outputs", ()):
            data = read_frame(self._process.stdout)
            if data is None:
                self._died()
            arrays.append(np.load(io.BytesIO(data), allow_pickle=False))
        return reply, arrays

    def _drain_stderr(self) -> None:
        try:
            for line in io.TextIOWrapper(self._process.stderr, errors="replace"):
                self._stderr.append(line.rstrip())
        except (ValueError, OSError):
            return

    def _died(self) -> None:
        code = self._process.wait()
        self._reader.join(timeout=5)
        raise HarrisonError(f"the Caffe worker for {self._what} stopped (exit {code}):\n" + _last_lines("\n".join(self._stderr)))


def solver_outputs(path: Path) -> caffe_pb2.SolverParameter:
    """The solver at ``path``, checked for what ``train`` needs to find its snapshots."""
    param = read_solver(path)
    if not param.snapshot_prefix or not param.max_iter:
        raise HarrisonError(f"{path}: a solver needs snapshot_prefix and max_iter; see prototxt/classifier/solver_object.prototxt")
    return param


def _check_gpu(install: CaffeInstall, gpu: int) -> None:
    """``caffe device_query -gpu N``: fails on CPU-only builds and missing devices."""
    command = install.command(["caffe", "device_query", "-gpu", str(gpu)], "/tmp", gpu=True)
    done = subprocess.run(command, capture_output=True, text=True, env=install.environment())
    if done.returncode != 0:
        raise HarrisonError(f"Caffe from {install.where} cannot use GPU {gpu}:\n{_last_lines(done.stderr, 3)}")


def _loss_of(event: caffelog.Event | None) -> float | None:
    if isinstance(event, caffelog.Display) and not event.final:
        return event.loss
    if isinstance(event, caffelog.NetOutput) and event.phase == "train" and event.loss_weight:
        return event.value
    return None


def _existing(path: str | os.PathLike | None, what: str) -> Path:
    path = Path(path).resolve()  # type: ignore[arg-type]
    if not path.exists():
        raise HarrisonError(f"{path}: {what} file not found")
    return path


def _last_lines(text: str, count: int = 8) -> str:
    """Caffe's error and fatal glog lines in ``text`` (the reason it stopped), else its last ``count`` lines."""
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"[EF]\d{4} ", line)]
    return "\n".join((errors or lines)[-count:]) or "(no output)"


def _stop(process: subprocess.Popen) -> None:
    """End a worker or ``caffe train``: close its input, then terminate its process group if it lingers."""
    if process.stdin and not process.stdin.closed:
        try:
            process.stdin.close()
        except OSError:
            pass
    if process.poll() is None:
        try:
            process.wait(timeout=2 if process.stdin else 0)
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    for pipe in (process.stdout, process.stderr):
        if pipe and not pipe.closed:
            pipe.close()
