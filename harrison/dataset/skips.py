"""Bad input records: an error that names file and line, or, with --skip-bad, a count for the manifest."""
from __future__ import annotations

import os
from collections import Counter
from typing import Any

from harrison.errors import HarrisonError

EXAMPLES = 20


class BadRecords:
    """Collects bad records; raises on the first one unless ``skip`` is set."""

    def __init__(self, skip: bool = False):
        self.skip = skip
        self.reasons: Counter[str] = Counter()
        self.examples: list[str] = []

    def report(self, path: str | os.PathLike, line: int, reason: str, detail: str, fix: str) -> None:
        """One bad record at ``path:line``: ``reason`` is its short kind, ``detail`` what was found, ``fix`` what to do."""
        where = f"{path}:{line}: {reason}: {detail}"
        if not self.skip:
            raise HarrisonError(f"{where}; {fix}, or rerun with --skip-bad to skip and count such records")
        self.reasons[reason] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(where)

    @property
    def count(self) -> int:
        """How many records were skipped."""
        return sum(self.reasons.values())

    def summary(self) -> dict[str, Any]:
        """For the manifest: total, per reason, and the first few as ``file:line: reason: detail``."""
        return {"count": self.count, "reasons": dict(sorted(self.reasons.items())), "examples": list(self.examples)}
