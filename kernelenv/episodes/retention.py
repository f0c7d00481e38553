"""How much of a journal is kept: by age, by count and by bytes, oldest files going first.

A server that journals every episode of an RL run would otherwise keep millions of files. The
server prunes its journal as episodes end (at most once every ``PRUNE_INTERVAL_S``), and
``kernelenv journal prune`` does it by hand. Files of episodes that are still running in this
process are never removed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

# How often a journal prunes itself as episodes end.
PRUNE_INTERVAL_S = 60.0
# A server's defaults (and `kernelenv journal prune`'s).
DEFAULT_MAX_AGE_DAYS = 14.0
DEFAULT_MAX_FILES = 10_000
DEFAULT_MAX_MB = 1024


@dataclass(frozen=True)
class Retention:
    """What a journal keeps; a bound of None is no bound.

    Args:
        max_age_s: Files last written longer ago than this go.
        max_files: At most this many files stay (the newest).
        max_bytes: The files that stay hold at most this many bytes (the newest).
    """

    max_age_s: float | None = None
    max_files: int | None = None
    max_bytes: int | None = None

    @classmethod
    def from_settings(cls, max_age_days: float, max_files: int, max_mb: int) -> Retention:
        """From the settings' units, where 0 lifts a bound (as ``--journal-max-*`` say)."""
        if min(max_age_days, max_files, max_mb) < 0:
            raise ValueError("journal bounds cannot be negative")
        return cls(
            max_age_s=max_age_days * 86400 or None,
            max_files=max_files or None,
            max_bytes=(max_mb << 20) or None,
        )

    @property
    def unbounded(self) -> bool:
        return self.max_age_s is None and self.max_files is None and self.max_bytes is None


def prune(
    directory: str | os.PathLike[str],
    retention: Retention,
    *,
    suffix: str = ".jsonl",
    keep: Collection[Path] = (),
    now: float | None = None,
) -> list[Path]:
    """Remove the journal files of ``directory`` that ``retention`` does not keep, oldest
    first; returns them. ``keep`` (files of running episodes) are never removed, and take
    their share of the bounds first. Symbolic links and other non-files are left alone."""
    if retention.unbounded:
        return []
    now = time.time() if now is None else now
    kept = {Path(p) for p in keep}
    files = []
    with contextlib.suppress(FileNotFoundError):
        with os.scandir(directory) as entries:
            for entry in entries:
                if not entry.name.endswith(suffix) or not entry.is_file(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat(follow_symlinks=False)
                    files.append((stat.st_mtime, stat.st_size, Path(entry.path)))
    files.sort(reverse=True)  # newest first: they are the ones kept
    # Running episodes' files take their share of the bounds first.
    running = [(size, path) for _, size, path in files if path in kept]
    removed, count, total = [], len(running), sum(size for size, _ in running)
    for mtime, size, path in files:
        if path in kept:
            continue
        too_old = retention.max_age_s is not None and now - mtime > retention.max_age_s
        too_many = retention.max_files is not None and count + 1 > retention.max_files
        too_big = retention.max_bytes is not None and total + size > retention.max_bytes
        if too_old or too_many or too_big:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
            continue
        count, total = count + 1, total + size
    return removed
