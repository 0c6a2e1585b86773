"""The small interface that both engines implement.

An engine runs Caffe's own files: net and solver prototxt, .caffemodel and .solverstate.
``caffe`` is real BVLC Caffe 1.0; ``torch`` is the project's executor of the same files on PyTorch.
Stages talk to engines only through this interface.
"""
from __future__ import annotations

import abc
import dataclasses
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


@dataclasses.dataclass
class TrainResult:
    """What a finished ``Engine.train`` call leaves behind."""

    weights: Path
    """The final .caffemodel (Caffe's ``<snapshot_prefix>_iter_<max_iter>.caffemodel``)."""
    state: Path | None
    """The matching .solverstate, when one was written."""
    iterations: int
    log: Path
    """Caffe-format log (glog lines) that ``harrison.train.caffelog`` parses, whichever engine wrote it."""


class NetRunner(abc.ABC):
    """A net loaded in the TEST phase with its weights, ready for batched forward passes."""

    @abc.abstractmethod
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the net's input blobs as declared (batch dimension included)."""

    @abc.abstractmethod
    def forward(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Run one forward pass with ``inputs`` (float32, any batch size) and return copies of ``outputs``."""

    def close(self) -> None:
        """Release the net (and any worker process)."""

    def __enter__(self) -> "NetRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Engine(abc.ABC):
    """One way of running Caffe files. Obtain one with ``harrison.engines.get_engine``."""

    name: str = ""
    chosen_because: str = "built directly, not through get_engine"
    """Why this engine runs the work; ``get_engine`` sets it."""

    @classmethod
    @abc.abstractmethod
    def available(cls, gpu: int | None) -> tuple[bool, str]:
        """Whether this engine can run here on CPU (``gpu=None``) or GPU ``gpu``, and why (found where, or what is missing)."""

    @classmethod
    @abc.abstractmethod
    def create(cls, gpu: int | None) -> "Engine":
        """The engine on CPU or GPU ``gpu``; raises ``HarrisonError`` with the fix when it cannot run here."""

    @abc.abstractmethod
    def describe(self) -> dict[str, str]:
        """Facts for manifests and ``harrison doctor``: version, device, BLAS, where it was found."""

    def manifest_entry(self) -> dict[str, str]:
        """What a stage's manifest records of the engine: ``describe()`` and why it was chosen."""
        return {**self.describe(), "chosen_because": self.chosen_because}

    @abc.abstractmethod
    def load_net(self, net: str | os.PathLike, weights: str | os.PathLike | None) -> NetRunner:
        """Load ``net`` (prototxt, TEST phase) with ``weights`` (.caffemodel; None keeps the fillers' values)."""

    @abc.abstractmethod
    def init_weights(self, net: str | os.PathLike, out: str | os.PathLike, seed: int) -> Path:
        """Fill every parameter of ``net`` with its fillers, seeded, and save it as the .caffemodel ``out``."""

    @abc.abstractmethod
    def train(
        self,
        solver: str | os.PathLike,
        *,
        log: str | os.PathLike,
        resume: str | os.PathLike | None = None,
        weights: str | os.PathLike | None = None,
    ) -> TrainResult:
        """Run the solver to ``max_iter`` as ``caffe train`` does, writing a Caffe-format ``log``.

        ``resume`` is a .solverstate to continue from (``caffe train -snapshot``); ``weights`` a
        .caffemodel to start from (``caffe train -weights``). Raises ``HarrisonError`` on divergence
        (NaN or inf loss), naming the iteration; the snapshots written before it are kept.
        """
