"""Caffe's training log: glog lines written by the torch engine, parsed for both engines.

The lines are those that BVLC Caffe 1.0's ``caffe train`` prints (solver.cpp, sgd_solver.cpp), e.g.::

    I1129 04:50:00.123456 12345 solver.cpp:239] Iteration 100 (3.2 iter/s, 31.25s/100 iters), loss = 0.693
    I1129 04:50:00.123470 12345 solver.cpp:258]     Train net output #0: loss = 0.693 (* 1 = 0.693 loss)
    I1129 04:50:00.123480 12345 sgd_solver.cpp:112] Iteration 100, lr = 0.1

Numbers are printed as C++ streams print a float (six significant digits, ``%g``).
``parse_log`` turns either engine's log into train rows (iteration, displayed loss, lr) and
test rows (iteration, output, value); ``write_loss_csv`` and ``plot_loss`` render them.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import os
import re
from pathlib import Path
from typing import Iterable, TextIO, Union

from harrison.errors import HarrisonError
from harrison.files import atomic_path

# Source locations that the Caffe 1.0 build (Debian bullseye package) prints for each message.
_SOURCES = {
    "solving": "solver.cpp:289",
    "policy": "solver.cpp:290",
    "display": "solver.cpp:239",
    "train_output": "solver.cpp:258",
    "lr": "sgd_solver.cpp:112",
    "multistep": "sgd_solver.cpp:50",
    "clip": "sgd_solver.cpp:99",
    "testing": "solver.cpp:347",
    "test_loss": "solver.cpp:401",
    "test_output": "solver.cpp:414",
    "snapshot_model": "solver.cpp:464",
    "snapshot_state": "sgd_solver.cpp:284",
    "final_loss": "solver.cpp:327",
    "stopped": "solver.cpp:311",
    "done": "solver.cpp:332",
    "resume": "caffe.cpp:235",
    "restore_history": "sgd_solver.cpp:336",
}


def cfloat(value: float) -> str:
    """``value`` as a C++ ostream prints a float by default (``%g``, six significant digits)."""
    return format(float(value), ".6g")


# --------------------------------------------------------------------------------------------- writer


class LogWriter:
    """Writes Caffe-format glog lines to ``path`` (truncated, or appended to with ``append=True``).

    Every line is flushed at once, so ``tail -f`` follows training as it runs.
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: TextIO = open(self.path, "a" if append else "w", encoding="utf-8")
        except OSError as exc:
            raise HarrisonError(f"cannot write the training log {self.path}: {exc.strerror}; choose a writable folder") from exc
        self._pid = os.getpid()

    def line(self, source: str, message: str, severity: str = "I") -> None:
        """One glog line: severity, MMDD HH:MM:SS.micro, thread id, ``source``] ``message``."""
        now = datetime.datetime.now()
        self._file.write(f"{severity}{now:%m%d %H:%M:%S.%f} {self._pid:5d} {source}] {message}\n")
        self._file.flush()

    def solving(self, net_name: str, lr_policy: str) -> None:
        self.line(_SOURCES["solving"], f"Solving {net_name}")
        self.line(_SOURCES["policy"], f"Learning Rate Policy: {lr_policy}")

    def resuming(self, state_path: str | os.PathLike) -> None:
        self.line(_SOURCES["resume"], f"Resuming from {state_path}")
        self.line(_SOURCES["restore_history"], "SGDSolver: restoring history")

    def display(self, iteration: int, iters_per_s: float, seconds: float, display: int, loss: float) -> None:
        """The display line: speed since the last display and the smoothed loss."""
        self.line(
            _SOURCES["display"],
            f"Iteration {iteration} ({cfloat(iters_per_s)} iter/s, {cfloat(seconds)}s/{display} iters), loss = {cfloat(loss)}",
        )

    def net_output(self, phase: str, index: int, name: str, value: float, loss_weight: float) -> None:
        """``    Train net output #i: name = v (* w = w*v loss)`` (``phase`` is "Train" or "Test")."""
        suffix = f" (* {cfloat(loss_weight)} = {cfloat(loss_weight * value)} loss)" if loss_weight else ""
        self.line(
            _SOURCES["train_output" if phase == "Train" else "test_output"],
            f"    {phase} net output #{index}: {name} = {cfloat(value)}{suffix}",
        )

    def lr(self, iteration: int, rate: float) -> None:
        self.line(_SOURCES["lr"], f"Iteration {iteration}, lr = {cfloat(rate)}")

    def multistep(self, iteration: int, step: int) -> None:
        self.line(_SOURCES["multistep"], f"MultiStep Status: Iteration {iteration}, step = {step}")

    def clipping(self, norm: float, clip: float, scale: float) -> None:
        self.line(
            _SOURCES["clip"],
            f"Gradient clipping: scaling down gradients (L2 norm {cfloat(norm)} > {cfloat(clip)}) by scale factor {cfloat(scale)}",
        )

    def testing(self, iteration: int, net_index: int = 0) -> None:
        self.line(_SOURCES["testing"], f"Iteration {iteration}, Testing net (#{net_index})")

    def test_loss(self, loss: float) -> None:
        """The mean test loss, printed when the solver sets test_compute_loss."""
        self.line(_SOURCES["test_loss"], f"Test loss: {cfloat(loss)}")

    def snapshot_model(self, path: str | os.PathLike) -> None:
        self.line(_SOURCES["snapshot_model"], f"Snapshotting to binary proto file {path}")

    def snapshot_state(self, path: str | os.PathLike) -> None:
        self.line(_SOURCES["snapshot_state"], f"Snapshotting solver state to binary proto file {path}")

    def final_loss(self, iteration: int, loss: float) -> None:
        self.line(_SOURCES["final_loss"], f"Iteration {iteration}, loss = {cfloat(loss)}")

    def stopped(self) -> None:
        """Training stopped by a signal (after its snapshot)."""
        self.line(_SOURCES["stopped"], "Optimization stopped early.")

    def done(self) -> None:
        self.line(_SOURCES["done"], "Optimization Done.")

    def error(self, source: str, message: str) -> None:
        self.line(source, message, severity="E")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- events


@dataclasses.dataclass(frozen=True)
class Display:
    """``Iteration N (... iter/s, ...), loss = L``; ``final`` for the last line of a run (``Iteration N, loss = L``)."""

    iteration: int
    loss: float
    final: bool = False


@dataclasses.dataclass(frozen=True)
class NetOutput:
    """``Train net output #i`` or ``Test net output #i``: one element of an output blob."""

    phase: str  # "train" or "test"
    index: int
    name: str
    value: float
    loss_weight: float


@dataclasses.dataclass(frozen=True)
class LearningRate:
    iteration: int
    lr: float


@dataclasses.dataclass(frozen=True)
class Testing:
    iteration: int
    net_index: int


@dataclasses.dataclass(frozen=True)
class Snapshot:
    kind: str  # "model" or "state"
    path: str


@dataclasses.dataclass(frozen=True)
class Resume:
    path: str


@dataclasses.dataclass(frozen=True)
class Done:
    pass


Event = Union[Display, NetOutput, LearningRate, Testing, Snapshot, Resume, Done]

_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]]*\] ")
_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|-?nan|-?inf))"
_PATTERNS: list[tuple[re.Pattern[str], object]] = [
    (
        re.compile(rf"^Iteration (\d+) \(.* iter/s, .*s/\d+ iters\), loss = {_NUM}$"),
        lambda m: Display(int(m[1]), float(m[2])),
    ),
    (re.compile(rf"^Iteration (\d+), loss = {_NUM}$"), lambda m: Display(int(m[1]), float(m[2]), final=True)),
    (re.compile(rf"^Iteration (\d+), lr = {_NUM}$"), lambda m: LearningRate(int(m[1]), float(m[2]))),
    (re.compile(r"^Iteration (\d+), Testing net \(#(\d+)\)$"), lambda m: Testing(int(m[1]), int(m[2]))),
    (
        re.compile(rf"^\s*(Train|Test) net output #(\d+): (\S+) = {_NUM}(?: \(\* {_NUM} = {_NUM} loss\))?$"),
        lambda m: NetOutput(m[1].lower(), int(m[2]), m[3], float(m[4]), float(m[5]) if m[5] else 0.0),
    ),
    (re.compile(r"^Snapshotting to (?:binary proto|HDF5) file (.+)$"), lambda m: Snapshot("model", m[1])),
    (re.compile(r"^Snapshotting solver state to (?:binary proto|HDF5) file (.+)$"), lambda m: Snapshot("state", m[1])),
    (re.compile(r"^(?:Resuming from|Restoring previous solver status from) (.+)$"), lambda m: Resume(m[1])),
    (re.compile(r"^Optimization Done\.$"), lambda m: Done()),
]


def parse_line(line: str) -> Event | None:
    """The training event on one log line (with or without the glog prefix), or None for any other line."""
    text = line.rstrip("\r\n")
    prefix = _PREFIX.match(text)
    if prefix:
        text = text[prefix.end():]
    for pattern, build in _PATTERNS:
        match = pattern.match(text)
        if match:
            return build(match)  # type: ignore[operator]
    return None


# --------------------------------------------------------------------------------------------- log


@dataclasses.dataclass
class TrainRow:
    """One displayed training iteration."""

    iteration: int
    loss: float
    """The loss as displayed (smoothed over ``average_loss`` iterations)."""
    lr: float | None = None
    outputs: list[tuple[str, float, float]] = dataclasses.field(default_factory=list)
    """The train net's outputs at this iteration, unsmoothed: (name, value, loss_weight)."""

    @property
    def raw_loss(self) -> float:
        """The weighted sum of this iteration's loss outputs (the unsmoothed loss of its last forward pass)."""
        return sum(weight * value for _, value, weight in self.outputs if weight)


@dataclasses.dataclass
class TestRow:
    iteration: int
    index: int
    name: str
    value: float
    loss_weight: float
    net_index: int = 0


@dataclasses.dataclass
class TrainingLog:
    """What a Caffe-format log says: train and test rows, snapshots, and whether it finished."""

    train: list[TrainRow] = dataclasses.field(default_factory=list)
    test: list[TestRow] = dataclasses.field(default_factory=list)
    snapshots: list[Snapshot] = dataclasses.field(default_factory=list)
    final_loss: Display | None = None
    done: bool = False

    def train_loss(self) -> dict[int, float]:
        """Displayed loss by iteration."""
        return {row.iteration: row.loss for row in self.train}

    def test_values(self, name: str) -> dict[int, float]:
        """The first element of test output ``name`` by iteration."""
        values: dict[int, float] = {}
        for row in self.test:
            if row.name == name:
                values.setdefault(row.iteration, row.value)
        return values


def _restart(log: TrainingLog, iteration: int) -> None:
    """A resumed run starts at ``iteration``: forget what the interrupted run logged from there on."""
    log.train = [row for row in log.train if row.iteration < iteration]
    log.test = [row for row in log.test if row.iteration < iteration]
    log.final_loss = None
    log.done = False


def parse_events(events: Iterable[Event]) -> TrainingLog:
    """Assemble events in log order into a ``TrainingLog``.

    A log that holds a run and its resumption (appended) keeps the resumed run's rows where both cover
    the same iterations.
    """
    log = TrainingLog()
    current: TrainRow | None = None
    testing: Testing | None = None
    resumed = False
    for event in events:
        if isinstance(event, Resume):
            resumed = True
        elif isinstance(event, Display) and not event.final:
            if resumed:
                _restart(log, event.iteration)
                resumed = False
            current = TrainRow(event.iteration, event.loss)
            log.train.append(current)
            testing = None
        elif isinstance(event, Display):
            log.final_loss = event
        elif isinstance(event, NetOutput) and event.phase == "train" and current is not None:
            current.outputs.append((event.name, event.value, event.loss_weight))
        elif isinstance(event, LearningRate):
            if current is not None and current.iteration == event.iteration:
                current.lr = event.lr
        elif isinstance(event, Testing):
            if resumed:
                _restart(log, event.iteration)
                resumed = False
            testing = event
        elif isinstance(event, NetOutput) and event.phase == "test" and testing is not None:
            log.test.append(
                TestRow(testing.iteration, event.index, event.name, event.value, event.loss_weight, testing.net_index)
            )
        elif isinstance(event, Snapshot):
            log.snapshots.append(event)
        elif isinstance(event, Done):
            log.done = True
    return log


def parse_log(path: str | os.PathLike) -> TrainingLog:
    """Parse a Caffe-format training log written by either engine."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return parse_events(event for event in map(parse_line, handle) if event is not None)
    except FileNotFoundError as exc:
        raise HarrisonError(f"{path}: training log not found; run the train stage first") from exc


def _test_labels(rows: list[TestRow]) -> list[str]:
    """Column names for test rows: the output name, with ``[k]`` when an output has several elements."""
    labels = []
    seen: dict[tuple[int, int, str], int] = {}
    counts: dict[str, int] = {}
    for row in rows:
        key = (row.iteration, row.net_index, row.name)
        seen[key] = seen.get(key, -1) + 1
        counts[row.name] = max(counts.get(row.name, 0), seen[key] + 1)
    seen.clear()
    for row in rows:
        key = (row.iteration, row.net_index, row.name)
        seen[key] = seen.get(key, -1) + 1
        labels.append(f"{row.name}[{seen[key]}]" if counts[row.name] > 1 else row.name)
    return labels


def write_loss_csv(log: TrainingLog, path: str | os.PathLike) -> Path:
    """Write ``phase,iteration,name,value`` rows (train loss and lr, then test outputs) atomically."""
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["phase", "iteration", "name", "value"])
            for row in log.train:
                writer.writerow(["train", row.iteration, "loss", repr(row.loss)])
                if row.lr is not None:
                    writer.writerow(["train", row.iteration, "lr", repr(row.lr)])
            for row, label in zip(log.test, _test_labels(log.test)):
                writer.writerow([f"test{row.net_index}" if row.net_index else "test", row.iteration, label, repr(row.value)])
    return Path(path)


def plot_loss(log: TrainingLog, png_path: str | os.PathLike, title: str | None = None) -> Path:
    """Plot the displayed train loss and the test losses against iterations, lr on a second axis (PNG, atomic)."""
    from harrison.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(8, 4.5))
    if log.train:
        ax.plot([r.iteration for r in log.train], [r.loss for r in log.train], label="train loss", lw=1.2)
    test_losses: dict[str, list[tuple[int, float]]] = {}
    for row in log.test:
        if row.loss_weight:
            test_losses.setdefault(row.name, []).append((row.iteration, row.loss_weight * row.value))
    for name, points in test_losses.items():
        ax.plot(*zip(*points), marker="o", ms=3, lw=1.2, label=f"test {name}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    rates = [(r.iteration, r.lr) for r in log.train if r.lr is not None]
    if rates:
        lr_axis = ax.twinx()
        lr_axis.plot(*zip(*rates), color="grey", ls="--", lw=0.8, label="lr")
        lr_axis.set_ylabel("learning rate")
        lr_axis.legend(loc="upper center", fontsize="small")
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    return save_figure(fig, png_path)
