"""Bad input data: one error type that names the file (and line), and a log for ``--skip-bad``.

Why: real datasets have missing files, truncated downloads and broken annotations. A loader must
either stop with a message that says exactly where to look, or -- only when the user asked for it
with ``--skip-bad`` -- leave the item out, count it and list it. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BadItem", "BadItemLog", "DataError"]

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file that cannot be used; ``str()`` reads ``FILE[:LINE]: reason``."""

    def __init__(self, file: str | Path, reason: str, line: int | None = None) -> None:
        self.file, self.reason, self.line = str(file), reason, line
        where = f"{self.file}:{line}" if line is not None else self.file
        super().__init__(f"{where}: {reason}")

    def item(self) -> BadItem:
        return BadItem(self.file, self.reason, self.line)


@dataclass(frozen=True)
class BadItem:
    """One skipped item: where it is and why it was left out."""

    file: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}"


class BadItemLog:
    """Raise on the first bad item, or (``skip_bad=True``) record it and go on."""

    def __init__(self, skip_bad: bool = False, what: str = "data") -> None:
        self.skip_bad, self.what = skip_bad, what
        self.items: list[BadItem] = []

    def report(self, error: DataError) -> None:
        """Raise ``error`` unless skipping; a skipped item is logged as a warning at once."""
        if not self.skip_bad:
            raise error
        self.items.append(error.item())
        log.warning("skipping bad %s item: %s", self.what, error)

    def __len__(self) -> int:
        return len(self.items)

    def summary(self, limit: int = 20) -> str:
        """A few lines for the end of a run: the count and the first ``limit`` items."""
        if not self.items:
            return f"{self.what}: no bad items"
        lines = [f"{self.what}: skipped {len(self.items)} bad item(s):"]
        lines += [f"  {item}" for item in self.items[:limit]]
        if len(self.items) > limit:
            lines.append(f"  ... and {len(self.items) - limit} more")
        return "\n".join(lines)
