"""Caffe 1.0's SGD solver on the torch engine: the same iteration, lr policies, log lines and snapshots.

One iteration, as in Caffe's ``Solver::Step`` and ``SGDSolver::ApplyUpdate`` (caffe-facts.md, "Solver"):
test when ``iter % test_interval == 0``; clear the diffs; forward/backward ``iter_size`` times (the shown
loss is their mean, smoothed over ``average_loss`` iterations); rate from the lr policy; clip_gradients
over all diffs; per learnable blob: diff *= 1/iter_size, diff += weight_decay * decay_mult * w (L2) or
* sign(w) (L1), history = momentum * history + rate * lr_mult * diff, w -= history; iter += 1; snapshot
when ``iter % snapshot == 0``, and after training.

The lr lives inside Caffe's history, so ``torch.optim.SGD`` (lr outside) is not used. The update runs as
one fused kernel per blob (``torch._fused_sgd_``, on CPU since torch 2.4), which keeps
``history / local_rate`` instead; that buffer is rescaled whenever the local rate changes, so the
.solverstate holds Caffe's own history.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from harrison.caffelog import LogWriter
from harrison.engines.base import TrainResult
from harrison.engines.torch.net import TorchNet
from harrison.errors import HarrisonError
from harrison.proto import caffe_pb2
from harrison.proto import io as proto_io

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def learning_rate(param: caffe_pb2.SolverParameter, iteration: int, current_step: int) -> tuple[float, int]:
    """Caffe's rate at ``iteration`` and the new ``current_step`` (SGDSolver::GetLearningRate).

    Arithmetic follows Caffe's types: float32 operands, ``pow`` with an integer exponent in double,
    the result rounded to float32. multistep raises ``current_step`` by at most one per call.
    """
    f32 = np.float32
    policy = param.lr_policy
    base_lr, gamma, power = f32(param.base_lr), f32(param.gamma), f32(param.power)
    if policy == "fixed":
        rate = base_lr
    elif policy == "step":
        current_step = iteration // param.stepsize
        rate = float(base_lr) * float(gamma) ** current_step
    elif policy == "exp":
        rate = float(base_lr) * float(gamma) ** iteration
    elif policy == "inv":
        rate = base_lr * np.power(f32(1) + gamma * f32(iteration), -power, dtype=f32)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
            current_step += 1
        rate = float(base_lr) * float(gamma) ** current_step
    elif policy == "poly":
        rate = base_lr * np.power(f32(1) - f32(iteration) / f32(param.max_iter), power, dtype=f32)
    elif policy == "sigmoid":
        rate = base_lr * (f32(1) / (f32(1) + np.exp(-gamma * (f32(iteration) - f32(param.stepsize)), dtype=f32)))
    else:
        raise HarrisonError(f"unknown lr_policy {policy!r}; use one of {', '.join(LR_POLICIES)}")
    return float(f32(rate)), current_step


def snapshot_prefix(param: caffe_pb2.SolverParameter, solver_path: str | os.PathLike, root: Path | None = None) -> str:
    """The prefix as Caffe 1.0 settles it: the solver file without its extension when unset, and
    ``<dir>/<solver stem>`` when the prefix names a folder (a relative one under ``root``, the working folder)."""
    if not param.HasField("snapshot_prefix"):
        return str(Path(solver_path).with_suffix(""))
    if ((root or Path.cwd()) / param.snapshot_prefix).is_dir():
        return str(Path(param.snapshot_prefix) / Path(solver_path).stem)
    return param.snapshot_prefix


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of returning large blocks to the system.

    Every backward pass allocates fresh gradient tensors (216 MB for the paper's classifier); by default
    each is a new mmap, so every page faults again on every iteration (about 50,000 faults, ~100 ms of
    CPU per iteration on 2 cores). Without mmap and with a high trim threshold the heap is reused.
    Other C libraries are left alone.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)


def _check(param: caffe_pb2.SolverParameter, path: Path) -> None:
    if param.type != "SGD":
        raise HarrisonError(f"{path}: solver type {param.type!r} is not supported by the torch engine; use type: \"SGD\" or --engine caffe")
    if param.lr_policy not in LR_POLICIES:
        raise HarrisonError(f"{path}: lr_policy {param.lr_policy!r} is not one of {', '.join(LR_POLICIES)}")
    if param.lr_policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise HarrisonError(f"{path}: lr_policy {param.lr_policy!r} needs stepsize > 0")
    if param.regularization_type not in ("L1", "L2"):
        raise HarrisonError(f"{path}: regularization_type {param.regularization_type!r} must be \"L1\" or \"L2\"")
    if param.snapshot_format != caffe_pb2.SolverParameter.BINARYPROTO:
        raise HarrisonError(f"{path}: snapshot_format HDF5 is not supported by the torch engine; remove it (BINARYPROTO is the default)")
    if param.average_loss < 1:
        raise HarrisonError(f"{path}: average_loss must be at least 1")
    if param.iter_size < 1:
        raise HarrisonError(f"{path}: iter_size must be at least 1")
    if len(param.test_iter) and param.test_interval <= 0:
        raise HarrisonError(f"{path}: test_iter is set, so test_interval must be > 0")


def _net_params(param: caffe_pb2.SolverParameter, path: Path) -> tuple[caffe_pb2.NetParameter, list[caffe_pb2.NetParameter]]:
    """The train net and the test nets, read as Caffe's InitTrainNet/InitTestNets read them (net files
    relative to the solver's folder)."""
    def read_net(name: str) -> caffe_pb2.NetParameter:
        return proto_io.read_net(path.parent / name)

    sources = [name for name in ("net", "net_param", "train_net", "train_net_param") if param.HasField(name)]
    if len(sources) != 1:
        raise HarrisonError(f"{path}: give exactly one of net, net_param, train_net, train_net_param (found {sources or 'none'})")
    generic = param.net_param if param.HasField("net_param") else read_net(param.net) if param.HasField("net") else None
    if generic is not None:
        train = generic
    elif param.HasField("train_net_param"):
        train = param.train_net_param
    else:
        train = read_net(param.train_net)
    tests = list(param.test_net_param) + [read_net(name) for name in param.test_net]
    if generic is None and len(param.test_iter) != len(tests):
        raise HarrisonError(f"{path}: give one test_iter per test net ({len(tests)} test nets, {len(param.test_iter)} test_iter)")
    if len(param.test_iter) < len(tests):
        raise HarrisonError(f"{path}: test_iter must be given for each test net")
    tests += [generic] * (len(param.test_iter) - len(tests))
    if param.test_state and len(param.test_state) != len(tests):
        raise HarrisonError(f"{path}: give test_state once per test net or not at all")
    return train, tests


def _build(net_param: caffe_pb2.NetParameter, phase: int, override: caffe_pb2.NetState, device: torch.device,
           seed: int, root: Path) -> TorchNet:
    """A net in the NetState Caffe composes: the phase, then the net's own state, then the solver's."""
    state = caffe_pb2.NetState(phase=phase)
    state.MergeFrom(net_param.state)
    state.MergeFrom(override)
    phase_name = caffe_pb2.Phase.Name(state.phase)
    return TorchNet(net_param, phase_name, device, stages=tuple(state.stage), level=state.level, seed=seed, root=root)


class SGDSolver:
    """Caffe's SGD solver over TorchNets: ``solve()`` runs to ``max_iter``, logging as ``caffe train`` does.

    Like the caffe engine, which starts ``caffe train`` in the solver's folder, relative paths in the
    solver and its nets (net, snapshot_prefix, data sources, a state's learned_net) resolve against the
    solver's folder, and are written into snapshots as given.
    """

    def __init__(self, solver_path: str | os.PathLike, *, log: LogWriter, device: torch.device | str) -> None:
        self.path = Path(solver_path).absolute()
        self.root = self.path.parent
        self.param = proto_io.upgrade_solver(proto_io.read_solver(self.path))
        _check(self.param, self.path)
        self.log = log
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.prefix = snapshot_prefix(self.param, self.path, self.root)
        if (self.param.snapshot or self.param.snapshot_after_train) and not (self.root / self.prefix).parent.is_dir():
            raise HarrisonError(f"{self.path}: cannot write snapshots to prefix {self.prefix!r}: its folder does not exist; create it")
        self.seed = self.param.random_seed if self.param.random_seed >= 0 else secrets.randbits(31)
        train, tests = _net_params(self.param, self.path)
        self.net = _build(train, caffe_pb2.TRAIN, self.param.train_state, self.device, self.seed, self.root)
        self.test_nets = [
            _build(test, caffe_pb2.TEST, self.param.test_state[i] if self.param.test_state else caffe_pb2.NetState(),
                   self.device, self.seed, self.root)
            for i, test in enumerate(tests)
        ]
        self.iter = 0
        self.current_step = 0
        self.learnable = list(self.net.learnable)
        self._buffers = [torch.zeros_like(item.param) for item in self.learnable]
        self._scales = [0.0] * len(self.learnable)  # history = scale * buffer; 0 while the history is all zeros
        self._losses: list[np.float32] = []
        self._smoothed = np.float32(0)
        self.snapshots: list[tuple[Path, Path]] = []
        self.stop_signal: int | None = None

    # ----------------------------------------------------------------------------------- state

    def load_weights(self, path: str | os.PathLike) -> None:
        """Start from a .caffemodel (``caffe train -weights``): layers are copied by name into every net."""
        for net in (self.net, *self.test_nets):
            net.load_caffemodel(path)

    def restore(self, state_path: str | os.PathLike) -> None:
        """Continue from a .solverstate: iter, current_step, history and the learned_net weights.

        The data layers are then moved to where an uninterrupted run would be at that iteration (the
        train net by iter * iter_size batches, each test net by the batches of the tests already run).
        Real Caffe restarts its data layers at the first record instead; both agree when the snapshot
        falls on an epoch boundary of every data source.
        """
        state_path = Path(state_path)
        if state_path.suffix == ".h5":
            raise HarrisonError(f"{state_path}: HDF5 solver states are not supported by the torch engine; resume from a .solverstate")
        state = proto_io.read_solverstate(state_path)
        if len(state.history) != len(self.learnable):
            raise HarrisonError(
                f"{state_path}: holds {len(state.history)} history blobs but the train net of {self.path.name} has "
                f"{len(self.learnable)} learnable blobs; resume with the solver that wrote it")
        if state.learned_net:
            self.net.load_caffemodel(self.root / state.learned_net)
        for index, (blob, item) in enumerate(zip(state.history, self.learnable)):
            history = proto_io.blob_to_array(blob)
            if history.size != item.param.numel():
                raise HarrisonError(
                    f"{state_path}: history blob {index} has {history.size} values, but {item.layer} blob {item.index} "
                    f"has {item.param.numel()}; resume with the solver that wrote it")
            self._buffers[index].copy_(torch.from_numpy(np.ascontiguousarray(history, dtype=np.float32)).reshape(item.param.shape))
            self._scales[index] = 1.0
        self.iter = state.iter
        self.current_step = state.current_step
        self.net.seek_data(self.iter * self.param.iter_size)
        for net, batches in zip(self.test_nets, self.param.test_iter):
            net.seek_data(batches * self._tests_before(self.iter))

    def _tests_before(self, iteration: int) -> int:
        """How many times the test nets ran before ``iteration`` in an uninterrupted run."""
        interval = self.param.test_interval
        if not interval or iteration <= 0:
            return 0
        return (iteration - 1) // interval + 1 - (0 if self.param.test_initialization else 1)

    def history(self) -> list[torch.Tensor]:
        """Caffe's momentum history per learnable blob (rate * lr_mult inside)."""
        return [buffer * scale for buffer, scale in zip(self._buffers, self._scales)]

    def snapshot(self) -> tuple[Path, Path]:
        """Write ``<prefix>_iter_<iter>.caffemodel`` and ``.solverstate`` (atomically, logged as Caffe logs them)."""
        model = f"{self.prefix}_iter_{self.iter}.caffemodel"
        self.log.snapshot_model(model)
        self.net.save_caffemodel(self.root / model)
        state = caffe_pb2.SolverState(iter=self.iter, learned_net=model, current_step=self.current_step)
        for history in self.history():
            state.history.append(proto_io.array_to_blob(history.detach().cpu().numpy()))
        state_path = f"{self.prefix}_iter_{self.iter}.solverstate"
        self.log.snapshot_state(state_path)
        proto_io.write_solverstate(self.root / state_path, state)
        self.snapshots.append((self.root / model, self.root / state_path))
        return self.snapshots[-1]

    # ----------------------------------------------------------------------------------- running

    def _smooth(self, loss: float, start_iter: int) -> np.float32:
        """Solver::UpdateSmoothedLoss, in float32."""
        loss32 = np.float32(loss)
        average = self.param.average_loss
        if len(self._losses) < average:
            self._losses.append(loss32)
            size = len(self._losses)
            self._smoothed = np.float32((self._smoothed * np.float32(size - 1) + loss32) / np.float32(size))
        else:
            index = (self.iter - start_iter) % average
            self._smoothed = np.float32(self._smoothed + (loss32 - self._losses[index]) / np.float32(average))
            self._losses[index] = loss32
        return self._smoothed

    def _outputs(self, net: TorchNet, blobs: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor, float]]:
        """The net's output blobs, flattened, with their loss weights, in Caffe's output order."""
        weights = dict(net.loss_weights)
        return [(name, blobs[name].detach().reshape(-1), weights.get(name, 0.0)) for name in net.output_names]

    def test_all(self) -> None:
        """Solver::TestAll: run every test net test_iter times with the train net's weights; log the mean outputs."""
        for index, (net, batches) in enumerate(zip(self.test_nets, self.param.test_iter)):
            self.log.testing(self.iter, index)
            net.share_weights(self.net)
            totals: list[tuple[str, torch.Tensor, float]] = []
            loss = np.float32(0)
            with torch.no_grad():
                for batch in range(batches):
                    blobs = net.forward()
                    if self.param.test_compute_loss:
                        loss += np.float32(net.loss(blobs).item())
                    outputs = self._outputs(net, blobs)
                    if batch == 0:
                        totals = [(name, values.to(torch.float32).clone(), weight) for name, values, weight in outputs]
                    else:
                        for (_, total, _), (_, values, _) in zip(totals, outputs):
                            total += values
            if self.param.test_compute_loss:
                self.log.test_loss(loss / np.float32(batches))
            position = 0
            for name, total, weight in totals:
                for value in (total / np.float32(batches)).tolist():
                    self.log.net_output("Test", position, name, value, weight)
                    position += 1

    def _forward_backward(self, index: int) -> tuple[float, dict[str, torch.Tensor]]:
        self.net.set_iteration(index)
        blobs = self.net.forward()
        loss = self.net.loss(blobs)
        loss.backward()
        return float(loss.detach()), blobs

    def _grads(self) -> list[torch.Tensor | None]:
        """Each learnable blob's diff; None where lr_mult is 0 (Caffe computes no diff for those)."""
        grads: list[torch.Tensor | None] = []
        for item in self.learnable:
            if item.lr_mult and item.param.grad is None:  # a blob the loss does not reach
                item.param.grad = torch.zeros_like(item.param)
            grads.append(item.param.grad if item.lr_mult else None)
        return grads

    @torch.no_grad()
    def apply_update(self, grads: Sequence[torch.Tensor | None], rate: float) -> None:
        """SGDSolver::ApplyUpdate after the rate: clip, normalize, regularize, momentum history, w -= history."""
        param = self.param
        present = [grad for grad in grads if grad is not None]
        if param.clip_gradients >= 0 and present:
            norm = math.sqrt(sum(float(n) ** 2 for n in torch._foreach_norm(present)))
            if norm > param.clip_gradients:
                scale = param.clip_gradients / norm
                self.log.clipping(norm, param.clip_gradients, scale)
                torch._foreach_mul_(present, scale)
        momentum = float(np.float32(param.momentum))
        for index, (item, grad) in enumerate(zip(self.learnable, grads)):
            local_rate = float(np.float32(rate) * np.float32(item.lr_mult))
            buffer = self._buffers[index]
            if grad is None or local_rate == 0.0:  # history = momentum * history; w -= history
                if self._scales[index]:
                    buffer.mul_(momentum)
                    item.param.sub_(buffer, alpha=self._scales[index])
                continue
            if param.iter_size > 1:
                grad.mul_(float(np.float32(1) / np.float32(param.iter_size)))
            decay = float(np.float32(param.weight_decay) * np.float32(item.decay_mult))
            if decay and param.regularization_type == "L1":
                grad.add_(torch.sign(item.param), alpha=decay)
                decay = 0.0
            if self._scales[index] != local_rate:
                if self._scales[index]:
                    buffer.mul_(self._scales[index] / local_rate)
                self._scales[index] = local_rate
            if momentum == 0.0:  # torch's fused SGD takes no history buffer without momentum
                torch.add(grad, item.param, alpha=decay, out=buffer)
                item.param.sub_(buffer, alpha=local_rate)
                continue
            torch._fused_sgd_([item.param], [grad], [buffer], weight_decay=decay, momentum=momentum, lr=local_rate,
                              dampening=0.0, nesterov=False, maximize=False, is_first_step=False)

    def step(self, iterations: int, progress: tqdm | None = None) -> None:
        """Solver::Step: run ``iterations`` iterations from the current one."""
        param = self.param
        start_iter, stop_iter = self.iter, self.iter + iterations
        self._losses, self._smoothed = [], np.float32(0)
        timer, last = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            for item in self.learnable:
                item.param.grad = None
            if param.test_interval and self.iter % param.test_interval == 0 and (self.iter > 0 or param.test_initialization):
                self.test_all()
            display = bool(param.display) and self.iter % param.display == 0
            loss = 0.0
            for sub in range(param.iter_size):
                sub_loss, blobs = self._forward_backward(self.iter * param.iter_size + sub)
                loss += sub_loss
            loss = float(np.float32(loss) / np.float32(param.iter_size))
            if not math.isfinite(loss):
                self.log.error("solver.cpp:239", f"Iteration {self.iter}, loss = {loss}: training diverged")
                written = ", ".join(str(model) for model, _ in self.snapshots) or "none"
                raise HarrisonError(
                    f"{self.path}: training diverged at iteration {self.iter} (loss is {loss}); lower base_lr or add "
                    f"clip_gradients, then train again (snapshots kept: {written})")
            smoothed = self._smooth(loss, start_iter)
            if display:
                lapse = time.perf_counter() - timer
                self.log.display(self.iter, (self.iter - last) / (lapse or 1.0), lapse, param.display, smoothed)
                timer, last = time.perf_counter(), self.iter
                position = 0
                for name, values, weight in self._outputs(self.net, blobs):
                    for value in values.tolist():
                        self.log.net_output("Train", position, name, value, weight)
                        position += 1
            previous_step = self.current_step
            rate, self.current_step = learning_rate(param, self.iter, self.current_step)
            if param.lr_policy == "multistep" and self.current_step != previous_step:
                self.log.multistep(self.iter, self.current_step)
            if display:
                self.log.lr(self.iter, rate)
            self.apply_update(self._grads(), rate)
            self.iter += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{float(smoothed):.4g}", lr=f"{rate:.3g}", refresh=False)
            if param.snapshot and self.iter % param.snapshot == 0:
                self.snapshot()
            if self.stop_signal is not None:
                break

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT or SIGTERM stops training after the current iteration, as ``caffe train`` does on SIGINT
        (``-sigint_effect stop``): the snapshot is written, then KeyboardInterrupt is raised. A second
        signal interrupts at once. Only in the main thread."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request(signum: int, frame: object) -> None:
            if self.stop_signal is not None:
                raise KeyboardInterrupt
            self.stop_signal = signum

        previous = {number: signal.signal(number, request) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def solve(self, progress: bool = True) -> None:
        """Solver::Solve: step to max_iter, snapshot, then the final display and test, as ``caffe train`` does."""
        param = self.param
        self.log.solving(self.net.name, param.lr_policy)
        start_iter = self.iter
        with self._stop_on_signals(), \
                tqdm(total=param.max_iter, initial=self.iter, desc="train", unit="it", disable=None if progress else True) as bar:
            self.step(param.max_iter - self.iter, bar)
        if param.snapshot_after_train and (not param.snapshot or self.iter % param.snapshot != 0):
            self.snapshot()
        if self.stop_signal is not None:
            self.log.stopped()
            kept = f"resume from {self.snapshots[-1][1]}" if self.snapshots else "no snapshot was written"
            raise KeyboardInterrupt(f"{self.path}: training stopped by {signal.Signals(self.stop_signal).name} "
                                    f"at iteration {self.iter} of {param.max_iter}; {kept}")
        if param.display and self.iter % param.display == 0:
            self.net.set_iteration(self.iter * param.iter_size)
            with torch.no_grad():
                loss = float(self.net.loss(self.net.forward()))
            self.log.final_loss(self.iter, self._smooth(loss, start_iter))
        if param.test_interval and self.iter % param.test_interval == 0:
            self.test_all()
        self.log.done()


def run_solver(
    solver: str | os.PathLike,
    *,
    log: str | os.PathLike,
    resume: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Train as ``caffe train -solver SOLVER [-snapshot RESUME | -weights WEIGHTS]`` does, on ``device``.

    Relative paths in the solver resolve against its folder (see SGDSolver). Writes the Caffe-format
    ``log`` (appended to when resuming) and the snapshots; raises HarrisonError on a NaN or infinite
    loss, naming the iteration, keeping the snapshots already written.
    """
    if resume is not None and weights is not None:
        raise HarrisonError("give either resume (a .solverstate) or weights (a .caffemodel), not both")
    solver = Path(solver).absolute()
    if not solver.is_file():
        raise HarrisonError(f"{solver}: solver not found; check the path")
    log = Path(log).absolute()
    resume = Path(resume).absolute() if resume is not None else None
    weights = Path(weights).absolute() if weights is not None else None
    with LogWriter(log, append=resume is not None) as writer:
        sgd = SGDSolver(solver, log=writer, device=device)
        if resume is not None:
            writer.resuming(resume)
            sgd.restore(resume)
        elif weights is not None:
            sgd.load_weights(weights)
        sgd.solve(progress=progress)
    if not sgd.snapshots:
        raise HarrisonError(f"{solver}: no snapshot was written (snapshot_after_train is false); set snapshot or snapshot_after_train")
    model, state = sgd.snapshots[-1]
    return TrainResult(weights=model, state=state, iterations=sgd.iter, log=log)
