"""Whole folders written atomically: built beside their final place, then renamed into it."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from harrison.errors import HarrisonError


@contextlib.contextmanager
def building_folder(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block succeeds it replaces ``final``.

    An error or interruption leaves ``final`` as it was and removes the temporary folder.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    except OSError as exc:
        raise HarrisonError(f"cannot write in {final.parent}: {exc.strerror}; choose a writable output folder") from None
    try:
        tmp.chmod(0o755)
        yield tmp
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
