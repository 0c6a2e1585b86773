"""``harrison doctor``: what was found here and will be used, and how to fix what is missing.

Checks Python and numpy, real Caffe (version, CPU/GPU mode, BLAS, where it was found), torch and CUDA
(device names), the engine that ``--engine auto`` picks, WordNet for NLTK, and the free disk of the run
folder. Exits 0 when the essentials are there: Python >= 3.9 with numpy, at least one engine, WordNet and
some free disk; 1 otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

from harrison.config import add_config_arguments, config_from_args
from harrison.engines.caffe.root import explicit_setting
from harrison.errors import HarrisonError

LOW_DISK_GB = 5.0


@dataclasses.dataclass
class Check:
    """One line of the report: ``ok`` or not, what was found, and the fix when it is missing."""

    name: str
    ok: bool
    found: str
    fix: str = ""
    essential: bool = True

    def render(self) -> str:
        status = "ok" if self.ok else ("MISSING" if self.essential else "warning")
        text = f"{self.name:<10} {status:<8} {self.found}"
        return text + (f"\n{'':<10} {'fix:':<8} {self.fix}" if self.fix and not self.ok else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--gpu", type=int, default=None, metavar="N", help="also check that Caffe and torch can use GPU N")


def check_python() -> Check:
    import numpy

    ok = sys.version_info >= (3, 9)
    return Check("python", ok, f"Python {sys.version.split()[0]} ({sys.executable}), numpy {numpy.__version__}",
                 "use Python 3.9 or newer (scripts/setup.sh builds .venv)")


def check_caffe(gpu: int | None) -> Check:
    from harrison.engines import engine_class

    cls = engine_class("caffe")
    found, why = cls.available(gpu)
    if not found:
        setting = explicit_setting()
        return Check("caffe", False, why, f"correct or unset {setting}" if setting else
                     "bash scripts/install_caffe.sh (needs root or sudo, about 1 minute and 1.1 GB)", essential=False)
    facts = cls.create(gpu).describe()
    return Check("caffe", True, f"Caffe {facts['version']}, {facts['mode']}, BLAS {facts['blas']}, "
                                f"{facts['found']}: {facts['where']}")


def check_torch(gpu: int | None) -> Check:
    try:
        import torch
    except ImportError:
        return Check("torch", False, "not installed", "bash scripts/setup.sh (installs torch into .venv)", essential=False)
    if torch.cuda.is_available():
        names = ", ".join(f"{i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))
        cuda = f"CUDA {torch.version.cuda}, devices {names}"
    else:
        cuda = "CUDA not available" + (f" (build has CUDA {torch.version.cuda})" if torch.version.cuda else " (CPU build)")
    ok = gpu is None or (torch.cuda.is_available() and gpu < torch.cuda.device_count())
    return Check("torch", ok, f"torch {torch.__version__}, {cuda}",
                 f"GPU {gpu} is not visible to torch: install a CUDA build (HARRISON_TORCH_SPEC=torch scripts/setup.sh)",
                 essential=False)


def check_engine(gpu: int | None) -> Check:
    from harrison.engines import get_engine

    try:
        engine, reason = get_engine("auto", gpu)
    except (HarrisonError, ImportError) as exc:
        setting = explicit_setting()
        return Check("engine", False, f"no engine can run here: {exc}",
                     f"correct or unset {setting}" if setting else "install real Caffe (scripts/install_caffe.sh) or torch (scripts/setup.sh)")
    return Check("engine", True, f"--engine auto uses {engine.name}: {reason}")


def check_wordnet() -> Check:
    from harrison.dataset.wordnet import INSTALL_HINT, find_wordnet

    where = find_wordnet()
    if where is None:
        return Check("wordnet", False, "WordNet for NLTK not found",
                     f"python -m harrison.dataset.wordnet (builds it from Debian's files), or {INSTALL_HINT}")
    return Check("wordnet", True, f"WordNet for NLTK at {where}")


def check_disk(workdir: Path) -> Check:
    existing = workdir
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free / 1e9
    return Check("disk", free >= 1.0, f"{free:.1f} GB free for the run folder {workdir}"
                 + (f" (the real release needs tens of GB; under {LOW_DISK_GB:g} GB is low)" if free < LOW_DISK_GB else ""),
                 "free disk space or pass --workdir on a larger disk")


def run(args: argparse.Namespace) -> int:
    workdir = config_from_args(args).workdir
    checks = [check_python(), check_caffe(args.gpu), check_torch(args.gpu), check_engine(args.gpu), check_wordnet(),
              check_disk(workdir)]
    for check in checks:
        print(check.render())
    missing = [check.name for check in checks if check.essential and not check.ok]
    if missing:
        print(f"essentials missing: {', '.join(missing)}")
        return 1
    print("ready")
    return 0
