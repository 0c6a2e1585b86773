"""Where real BVLC Caffe lives here, and how to run a command with it.

Discovery, first match wins (``find_caffe``):

1. ``HARRISON_CAFFE_PREFIX``: a command prefix (shell words), e.g. ``docker run --rm -i -v /data:/data -v /tmp:/tmp
   IMAGE``; ``sh``, ``caffe`` and ``python3`` (with pycaffe) must run under it and see host paths at their own names.
2. ``HARRISON_CAFFE_ROOT``: a root folder (a Debian root made by ``scripts/install_caffe.sh``), run through
   bubblewrap.
3. A native ``caffe`` on ``PATH`` with a ``python3`` on ``PATH`` that imports pycaffe.
4. The project's own root, ``.caffe-root`` at the top of the repository.

An explicit setting (1 or 2) that does not work is an error, never a silent fallback.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

from harrison.errors import HarrisonError

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_ROOT = PROJECT_ROOT / ".caffe-root"
INSTALL_HINT = "run scripts/install_caffe.sh (or set HARRISON_CAFFE_ROOT to a Caffe root, HARRISON_CAFFE_PREFIX to a command prefix)"

# Host folders that every command sees, beside the cwd and the folders of path arguments.
HOST_FOLDERS = ("/tmp",)
# Root folders that Caffe needs; a host path under one of these cannot be shown at its own name.
SYSTEM_FOLDERS = frozenset({"usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "var"})
# Root folders left to bwrap (--proc, --dev) or to the host (/tmp, ...).
SKIPPED_FOLDERS = frozenset({"proc", "dev", "sys", "run", "tmp"})
# Environment passed into the root; everything else is cleared (the host's PATH may name a venv).
PASSED_ENV = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GOTO_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES", "GLOG_minloglevel", "GLOG_logtostderr", "GLOG_v", "LANG", "TZ",
)
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclasses.dataclass(frozen=True)
class CaffeInstall:
    """One way of running real Caffe: ``kind`` is prefix, root, native or project."""

    kind: str
    where: str
    prefix: tuple[str, ...] = ()
    root: Path | None = None
    python: str = "python3"

    def command(self, args: Sequence[str], cwd: str | os.PathLike | None = None, *,
                gpu: bool = False, env: dict[str, str] | None = None) -> list[str]:
        """The argv that runs ``args`` (``caffe ...`` or ``python3 ...``) with this Caffe in ``cwd``.

        ``env`` adds variables inside a root (they are passed as they are elsewhere); ``gpu`` exposes
        the host's /dev in a root so that CUDA devices are visible. Under a prefix the command changes to
        ``cwd`` itself (a container starts elsewhere), so ``cwd`` must exist at the same path there.
        """
        args = [self.python if args[0] == "python3" else args[0], *args[1:]]
        cwd = str(cwd or os.getcwd())
        if self.kind == "prefix":
            return [*self.prefix, "sh", "-c", 'cd "$0" && exec "$@"', cwd, *args]
        if self.root is None:
            return args
        return bwrap_command(self.root, args, Path(cwd), gpu=gpu, env=env)

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for the subprocess that runs ``command(...)``."""
        env = dict(os.environ)
        env.update(extra or {})
        return env


def bwrap_command(root: Path, args: Sequence[str], cwd: Path, *, gpu: bool = False,
                  env: dict[str, str] | None = None) -> list[str]:
    """``bwrap`` argv running ``args`` in ``root`` with host paths (cwd, /tmp, path arguments) at their names.

    The root's ``/`` cannot take mount points, so ``/`` is a tmpfs and each top-level folder of the root is
    bound read-only (symlinked ones such as ``/lib -> usr/lib`` become symlinks).
    """
    host = host_folders([*HOST_FOLDERS, str(cwd), *(a for a in args if a.startswith("/"))])
    host_tops = {Path(path).parts[1] for path in host}
    clash = sorted(host_tops & SYSTEM_FOLDERS)
    if clash:
        raise HarrisonError(
            f"host paths under /{', /'.join(clash)} cannot be shown inside the Caffe root {root}, which provides "
            f"those folders; move the files elsewhere (e.g. under /tmp or your home)"
        )
    argv = ["bwrap", "--die-with-parent", "--tmpfs", "/"]
    for entry in sorted(root.iterdir()):
        name = entry.name
        if name in SKIPPED_FOLDERS or name in host_tops:
            continue
        if entry.is_symlink():
            argv += ["--symlink", os.readlink(entry), f"/{name}"]
        elif entry.is_dir():
            argv += ["--ro-bind", str(entry), f"/{name}"]
    for path in host:
        argv += ["--bind", path, path]
    argv += ["--dev-bind", "/dev", "/dev"] if gpu else ["--dev", "/dev"]
    argv += ["--proc", "/proc", "--chdir", str(cwd), "--clearenv", "--setenv", "PATH", ROOT_PATH,
             "--setenv", "HOME", "/tmp", "--setenv", "MPLCONFIGDIR", "/tmp"]
    passed = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    passed.update(env or {})
    for key, value in sorted(passed.items()):
        argv += ["--setenv", key, value]
    return [*argv, *args]


def host_folders(paths: Iterable[str]) -> list[str]:
    """The folders to bind for ``paths``: each path's top-level folder (``/work/a/b`` -> ``/work``).

    Paths under a system folder of the root (``/usr``, ``/etc``, ...) keep their name so that the caller can
    report them; ``/`` itself is never bound.
    """
    tops = set()
    for path in paths:
        parts = Path(os.path.abspath(path)).parts
        if len(parts) > 1:
            tops.add(os.path.join("/", parts[1]))
    return sorted(top for top in tops if os.path.isdir(top) or Path(top).parts[1] in SYSTEM_FOLDERS)


def root_is_complete(root: Path) -> bool:
    """Whether ``root`` holds the caffe tool, pycaffe and a python3 (an interrupted install does not)."""
    return all((root / part).exists() for part in ("usr/bin/caffe", "usr/bin/python3", "usr/lib/python3/dist-packages/caffe/__init__.py"))


def _check_runs(install: CaffeInstall) -> str:
    """``caffe --version`` through ``install``; its output, or a HarrisonError with the reason."""
    command = install.command(["caffe", "--version"], cwd="/tmp")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HarrisonError(f"cannot run Caffe from {install.where}: {exc}; {INSTALL_HINT}") from None
    text = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or "caffe version" not in text:
        raise HarrisonError(f"`caffe --version` failed from {install.where} ({text[-300:] or done.returncode}); {INSTALL_HINT}")
    return text.splitlines()[-1].replace("caffe version", "").strip()


def _from_root(root: Path, kind: str) -> CaffeInstall:
    named = f"HARRISON_CAFFE_ROOT={root}: " if kind == "root" else ""
    if not root.is_dir():
        raise HarrisonError(f"{named}no Caffe root at {root}; run scripts/install_caffe.sh {root}"
                            + (" or unset HARRISON_CAFFE_ROOT" if named else ""))
    if not root_is_complete(root):
        raise HarrisonError(f"{named}the Caffe root {root} is incomplete (an interrupted install?); "
                            f"rerun scripts/install_caffe.sh {root}")
    if shutil.which("bwrap") is None:
        raise HarrisonError(f"bubblewrap (bwrap) is needed to run the Caffe root {root}; apt-get install bubblewrap")
    return CaffeInstall(kind, str(root), root=root)


def _native() -> CaffeInstall | None:
    """A ``caffe`` on PATH together with the first ``python3`` on PATH that imports pycaffe."""
    caffe = shutil.which("caffe")
    if caffe is None:
        return None
    seen = set()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        python = Path(folder or ".") / "python3"
        real = python.resolve() if python.exists() else None
        if real is None or real in seen:
            continue
        seen.add(real)
        done = subprocess.run([str(python), "-c", "import caffe"], capture_output=True, timeout=120)
        if done.returncode == 0:
            return CaffeInstall("native", f"{caffe} (pycaffe under {python})", python=str(python))
    return None


@functools.lru_cache(maxsize=None)
def _find(prefix: str | None, root: str | None) -> tuple[CaffeInstall, str]:
    if prefix:
        install = CaffeInstall("prefix", f"HARRISON_CAFFE_PREFIX={prefix}", prefix=tuple(shlex.split(prefix)))
    elif root:
        install = _from_root(Path(root).expanduser().resolve(), "root")
    else:
        install = _native()
        if install is None:
            if not DEFAULT_ROOT.exists():
                raise HarrisonError(f"real Caffe was not found (no HARRISON_CAFFE_PREFIX or HARRISON_CAFFE_ROOT, "
                                    f"no caffe with pycaffe on PATH, no {DEFAULT_ROOT}); {INSTALL_HINT}")
            install = _from_root(DEFAULT_ROOT, "project")
    return install, _check_runs(install)


def explicit_setting() -> str | None:
    """The environment variable that names a Caffe explicitly (``HARRISON_CAFFE_PREFIX`` or ``_ROOT``), if one is set."""
    return next((name for name in ("HARRISON_CAFFE_PREFIX", "HARRISON_CAFFE_ROOT") if os.environ.get(name)), None)


def find_caffe() -> tuple[CaffeInstall, str]:
    """The Caffe to use and its version (``1.0.0``), following the discovery order; cached per setting.

    Raises ``HarrisonError`` with the install command when none works.
    """
    return _find(os.environ.get("HARRISON_CAFFE_PREFIX") or None, os.environ.get("HARRISON_CAFFE_ROOT") or None)


def caffe_command(args: Sequence[str], cwd: str | os.PathLike | None = None, *, gpu: bool = False) -> list[str]:
    """The argv that runs ``args`` (e.g. ``["caffe", "train", ...]``) with the Caffe that ``find_caffe`` picks."""
    install, _ = find_caffe()
    return install.command(args, cwd, gpu=gpu)
