"""The torch engine: Caffe's files run on PyTorch, on CPU or one CUDA device, in float32.

TF32 is off (matmuls and cuDNN convolutions in full float32) unless ``HARRISON_ALLOW_TF32=1``.
CPU work uses one thread per CPU this process may run on (``OMP_NUM_THREADS`` or
``HARRISON_THREADS`` override). Relative paths inside a net resolve against the net file's folder,
as with the caffe engine, which runs Caffe there.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from harrison.engines.base import Engine, NetRunner, TrainResult
from harrison.errors import HarrisonError


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise HarrisonError(f"{path}: {what} not found; check the path")
    return path


class TorchNetRunner(NetRunner):
    """A TEST-phase TorchNet with its weights; forwards run under ``torch.inference_mode``."""

    def __init__(self, net) -> None:
        self.net = net

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: self.net.blob_shapes[name] for name in self.net.input_names}

    def forward(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        import torch

        unknown = [name for name in inputs if name not in self.net.input_names]
        if unknown:
            raise HarrisonError(f"net {self.net.name!r} has no input blob {unknown[0]!r}; its inputs: {', '.join(self.net.input_names)}")
        with torch.inference_mode():
            tensors = {name: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)) for name, array in inputs.items()}
            blobs = self.net.forward(tensors, outputs)
            # pycaffe hands a scalar (0-axis) blob such as a loss out with shape (1,); so does this runner
            return {name: np.atleast_1d(blobs[name].cpu().numpy()).copy() for name in outputs}


class TorchEngine(Engine):
    """PyTorch on CPU (``gpu=None``) or CUDA device ``gpu``."""

    name = "torch"

    def __init__(self, gpu: int | None) -> None:
        import torch

        self.gpu = gpu
        self.device = torch.device("cpu" if gpu is None else f"cuda:{gpu}")
        self.tf32 = os.environ.get("HARRISON_ALLOW_TF32") == "1"
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        torch.backends.cudnn.deterministic = True  # seeded runs repeat, as Caffe's do
        torch.backends.cudnn.benchmark = False
        threads = os.environ.get("HARRISON_THREADS")
        if threads:
            torch.set_num_threads(int(threads))
        elif "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(len(os.sched_getaffinity(0)))

    @classmethod
    def available(cls, gpu: int | None) -> tuple[bool, str]:
        try:
            import torch
        except ImportError as exc:
            return False, f"PyTorch is not installed ({exc}); run `pip install -e .[torch]`"
        if gpu is None:
            return True, f"PyTorch {torch.__version__} on CPU"
        if not torch.cuda.is_available():
            return False, f"PyTorch {torch.__version__} sees no CUDA device (a CPU-only build or no driver)"
        count = torch.cuda.device_count()
        if not 0 <= gpu < count:
            return False, f"GPU {gpu} does not exist; PyTorch sees {count} CUDA device(s)"
        return True, f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(gpu)}"

    @classmethod
    def create(cls, gpu: int | None) -> "TorchEngine":
        found, why = cls.available(gpu)
        if not found:
            raise HarrisonError(f"the torch engine cannot run here: {why}")
        return cls(gpu)

    def describe(self) -> dict[str, str]:
        import torch

        facts = {
            "engine": "torch",
            "version": torch.__version__,
            "threads": str(torch.get_num_threads()),
            "tf32": "on" if self.tf32 else "off",
            "dtype": "float32",
        }
        if self.gpu is None:
            facts["device"] = f"cpu ({_cpu_name()})"
            facts["blas"] = "MKL" if torch.backends.mkl.is_available() else "default"
        else:
            facts["device"] = f"cuda:{self.gpu} ({torch.cuda.get_device_name(self.gpu)})"
            facts["cuda"] = str(torch.version.cuda)
            facts["cudnn"] = f"{torch.backends.cudnn.version()}, deterministic"
        return facts

    def _net(self, net: str | os.PathLike, phase: str, seed: int = 0):
        from harrison.engines.torch.net import TorchNet

        net = _existing(net, "net")
        return TorchNet.from_file(net, phase, self.device, seed=seed, root=net.parent)

    def load_net(self, net: str | os.PathLike, weights: str | os.PathLike | None) -> NetRunner:
        if self.gpu is None:
            # every forward allocates its activations afresh: reuse the heap instead of faulting in new pages
            # (VGG-16 at batch 10: 127,000 page faults per batch, 9% of the CPU time, otherwise)
            from harrison.engines.torch.solver import keep_freed_memory

            keep_freed_memory()
        torch_net = self._net(net, "TEST")
        if weights is not None:
            torch_net.load_caffemodel(_existing(weights, "weights"))
        return TorchNetRunner(torch_net)

    def init_weights(self, net: str | os.PathLike, out: str | os.PathLike, seed: int) -> Path:
        return self._net(net, "TEST", seed).save_caffemodel(out)

    def train(
        self,
        solver: str | os.PathLike,
        *,
        log: str | os.PathLike,
        resume: str | os.PathLike | None = None,
        weights: str | os.PathLike | None = None,
    ) -> TrainResult:
        from harrison.engines.torch.solver import run_solver

        return run_solver(solver, log=log, resume=resume, weights=weights, device=self.device)
