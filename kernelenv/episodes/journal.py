"""A crash-safe journal of episodes: one append-only JSON-lines file per episode, a line per step.

File layout (``<journal dir>/<episode_id>.jsonl``), one JSON object per line:

- ``{"kind": "episode", ...}``: the episode's id, seed, options, task and kernel (first line);
- ``{"kind": "step", "index": n, "action": ..., "observation": ..., "started_at": ..., ...}``:
  one per completed step, written and flushed to the operating system (which keeps it when
  the process is killed, even with SIGKILL) before the step's observation is returned to the
  caller, and with ``fsync=True`` also forced to the disk (which keeps it when the machine
  crashes, at the cost of one fsync a step);
- ``{"kind": "end", "reason": ...}``: the episode ended normally (reset, close).

An episode without an ``end`` line was running when its process died: :func:`recover_all`
turns each such journal into a notebook.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio
from nbformat import NotebookNode

from ..errors import JournalError
from ..models import CodeObservation, parse_action
from .export import EpisodeInfo, TimedStep, episode_info, episode_notebook, wall_clock_offset
from .retention import PRUNE_INTERVAL_S, Retention, prune

if TYPE_CHECKING:
    from ..models import StepRecord
    from .episode import Episode

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".jsonl"
# Ids that are their own journal file name (see _safe_name).
_PLAIN_NAME = re.compile(r"(?!\.)[A-Za-z0-9_.-]+")

# Environment variable naming the journal directory of `kernelenv serve` and `recover`.
JOURNAL_DIR_ENV = "KERNELENV_JOURNAL_DIR"


def default_journal_dir() -> Path:
    """``$KERNELENV_JOURNAL_DIR``, else ``journal/`` in the user's state directory."""
    configured = os.environ.get(JOURNAL_DIR_ENV)
    if configured:
        return Path(configured)
    from platformdirs import user_state_path

    return user_state_path("kernelenv") / "journal"


def shared_journal(
    directory: str | os.PathLike[str], *, fsync: bool = False, retention: Retention | None = None
) -> Journal:
    """The one :class:`Journal` of this process for ``directory`` (a server's sessions share it)."""
    return _shared_journal(str(Path(directory).absolute()), fsync, retention)


@functools.cache
def _shared_journal(directory: str, fsync: bool, retention: Retention | None) -> Journal:
    log.info("journaling episodes to %s", directory)
    return Journal(directory, fsync=fsync, retention=retention)


class Journal:
    """Records episodes as they happen so that a killed process loses no completed step.

    One journal serves any number of envs (a server's sessions); each episode has its own
    file. Writes run on a worker thread so an fsync never blocks the event loop.

    Example:
        >>> journal = Journal("episodes/")
        >>> async with KernelEnv(journal=journal) as env:
        ...     await env.reset()
        ...     await env.step("x = 1")   # durable before step() returns

    Args:
        directory: Where the journal files go (created if missing).
        fsync: Force each record to the disk, so that it survives a crash of the machine too
            (about 6 ms a step on a virtual disk). Without it a record is still written and
            flushed before the step returns, which is enough to survive the process being
            killed (SIGKILL): the data is then in the operating system's hands.
        retention: What the directory keeps (:class:`~kernelenv.episodes.retention.Retention`:
            age, file count, bytes); pruned as episodes end, at most once a minute, never
            touching a running episode's file. None keeps everything.

    Raises:
        JournalError: with ``fsync=True``, from ``begin`` or ``record_step`` (and so from the
            env's ``reset`` or ``step``) when a record or its directory cannot be forced to the
            disk. Without ``fsync`` such failures are logged and the step's
            ``metadata["journal_error"]`` says so.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: bool = False,
        retention: Retention | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self.retention = retention
        self._pruned_at = float("-inf")
        self._files: dict[str, IO[str]] = {}
        self._steps: dict[str, int] = {}
        self._unsynced_dirs: set[Path] = set()

    def path_of(self, episode_id: str) -> Path:
        """The journal file of an episode."""
        return self.directory / f"{_safe_name(episode_id)}{JOURNAL_SUFFIX}"

    async def begin(self, episode: Episode, *, kernel_name: str, python: str) -> None:
        """Start the journal of a just reset episode, whose kernels come from ``kernel_name``."""
        info = episode_info(episode, kernel_name=kernel_name, python=python)
        record = {"kind": "episode", "started_at": time.time(), "info": _info_dict(info)}
        try:
            await anyio.to_thread.run_sync(self._open_and_write, info.episode_id, record)
        except OSError as exc:
            message = f"journal {self.directory}: cannot start episode {info.episode_id}: {exc}"
            if self.fsync:  # durability was asked for: say it cannot be had
                raise JournalError(message) from exc
            log.error("%s", message)  # a full disk must not take the episode down with it

    async def record_step(self, episode: Episode, step: StepRecord) -> None:
        """Append one completed step and make it durable."""
        offset = wall_clock_offset()
        index = self._steps.get(episode.episode_id, 0) + 1
        record = {
            "kind": "step",
            "index": index,
            "action": step.action.model_dump(mode="json"),
            "observation": step.observation.model_dump(mode="json"),
            "started_at": step.started_at + offset,
            "ended_at": step.ended_at + offset,
        }
        try:
            await anyio.to_thread.run_sync(self._write, episode.episode_id, record)
        except OSError as exc:
            message = (
                f"journal {self.directory}: step {index} of {episode.episode_id} not recorded "
                f"durably: {exc}"
            )
            if self.fsync:  # durability was asked for: say it cannot be had
                raise JournalError(message) from exc
            log.error("%s", message)
            step.observation.metadata["journal_error"] = str(exc)
            return
        self._steps[episode.episode_id] = index

    async def end(self, episode_id: str, reason: str) -> None:
        """Mark an episode as ended normally and close its file. Safe to call twice."""
        if episode_id not in self._files:
            return
        try:
            # Not synced: if a crash loses this line, recover just rebuilds one more notebook.
            record = {"kind": "end", "reason": reason}
            await anyio.to_thread.run_sync(
                functools.partial(self._write, durable=False), episode_id, record
            )
        except OSError as exc:
            log.error("journal %s: end of %s not recorded: %s", self.directory, episode_id, exc)
        finally:
            self._close(episode_id)
        await self.prune_if_due()

    async def prune_if_due(self) -> None:
        """Apply the retention, unless that was done less than a minute ago."""
        now = time.monotonic()
        if self.retention is None or now - self._pruned_at < PRUNE_INTERVAL_S:
            return
        self._pruned_at = now
        running = [self.path_of(episode_id) for episode_id in list(self._files)]
        try:
            removed = await anyio.to_thread.run_sync(
                functools.partial(
                    prune, self.directory, self.retention, suffix=JOURNAL_SUFFIX, keep=running
                )
            )
        except OSError as exc:
            log.error("journal %s: pruning failed: %s", self.directory, exc)
            return
        if removed:
            log.info("journal %s: %d old episode files removed", self.directory, len(removed))

    def close(self) -> None:
        """Close every open file without marking episodes ended (they stay recoverable)."""
        for episode_id in list(self._files):
            self._close(episode_id)

    # -- file work (worker thread) ------------------------------------------------------

    def _open_and_write(self, episode_id: str, record: dict[str, Any]) -> None:
        self._close(episode_id)
        if not self.directory.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            self._unsynced_dirs.add(self.directory.parent)
        self._unsynced_dirs.add(self.directory)  # the new file's name must survive a crash
        path = self.path_of(episode_id)
        # A reused episode id starts a new journal; "w" truncates the old one.
        self._files[episode_id] = path.open("w", encoding="utf-8")
        self._steps[episode_id] = 0
        # Not synced here: the first step's fsync covers it, which keeps reset fast.
        self._write(episode_id, record, durable=False)

    def _write(self, episode_id: str, record: dict[str, Any], *, durable: bool = True) -> None:
        handle = self._files.get(episode_id)
        if handle is None:
            return
        handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        handle.flush()  # in the OS's hands: survives this process being killed
        if durable and self.fsync:  # on the disk: survives the machine crashing
            os.fsync(handle.fileno())
            while True:  # other episodes' threads may be draining the same set
                try:
                    directory = self._unsynced_dirs.pop()
                except KeyError:
                    break
                try:
                    _fsync_dir(directory)
                except OSError:
                    self._unsynced_dirs.add(directory)  # still not durable: the next step retries
                    raise

    def _close(self, episode_id: str) -> None:
        handle = self._files.pop(episode_id, None)
        self._steps.pop(episode_id, None)
        if handle is not None:
            handle.close()


@dataclass
class JournalEntry:
    """An episode read back from its journal file.

    Attributes:
        path: The journal file.
        info: The episode's id, seed, task and kernel.
        steps: Every completed step, in order.
        ended: Whether the episode ended normally (False: it was running when its process died).
        started_at: When the episode started (seconds since the epoch).
    """

    path: Path
    info: EpisodeInfo
    steps: list[TimedStep] = field(default_factory=list)
    ended: bool = False
    started_at: float | None = None

    def notebook(self) -> NotebookNode:
        """The episode's notebook; its metadata names the journal and says if the episode ended."""
        notebook = episode_notebook(self.info, self.steps)
        notebook.metadata["kernelenv"]["journal"] = {"file": self.path.name, "ended": self.ended}
        return notebook


def read_journal(path: str | os.PathLike[str]) -> JournalEntry:
    """Read one journal file. A torn last line (a write cut short by a crash) is ignored.

    Raises:
        ValueError: the file is not a kernelenv journal.
    """
    path = Path(path)
    entry: JournalEntry | None = None
    for record in _records(path):
        kind = record.get("kind")
        if kind == "episode":
            entry = JournalEntry(
                path=path,
                info=EpisodeInfo(**record["info"]),
                started_at=record.get("started_at"),
            )
        elif entry is None:
            break
        elif kind == "step":
            entry.steps.append(
                TimedStep(
                    action=parse_action(record["action"]),
                    observation=CodeObservation.model_validate(record["observation"]),
                    started_at=record["started_at"],
                    ended_at=record["ended_at"],
                )
            )
        elif kind == "end":
            entry.ended = True
    if entry is None:
        raise ValueError(f"{path} is not a kernelenv journal (no episode record first)")
    return entry


def read_journals(directory: str | os.PathLike[str]) -> Iterator[JournalEntry]:
    """Every readable journal in ``directory``, oldest file first (unreadable ones are logged)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    paths = sorted(directory.glob(f"*{JOURNAL_SUFFIX}"), key=lambda p: (p.stat().st_mtime, p.name))
    for path in paths:
        try:
            yield read_journal(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping %s: %s", path, exc)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return  # torn final write
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                return


def _info_dict(info: EpisodeInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in info.__dataclass_fields__}


def _safe_name(episode_id: str) -> str:
    # Episode ids come from clients: keep them from naming paths outside the journal, and keep
    # the mapping one-to-one. An ASCII id of letters, digits, '_', '-' and '.' (not first) is
    # its own name; any other id becomes its cleaned-up prefix, '=' and a hash of the whole id.
    # No name of the first kind contains '=', so the two kinds never collide.
    if len(episode_id) <= 128 and _PLAIN_NAME.fullmatch(episode_id):
        return episode_id
    prefix = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in episode_id)
    digest = hashlib.sha256(episode_id.encode(errors="surrogatepass")).hexdigest()[:32]
    return f"{prefix[:64]}={digest}"


def _fsync_dir(directory: Path) -> None:
    """Force a directory's entries (new file names) to the disk; raises OSError when it cannot."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_all(
    journal_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    include_ended: bool = False,
    progress: bool | None = False,
) -> list[Path]:
    """Write the notebook of every episode that was running (no ``end`` record) to ``out_dir``.

    Args:
        journal_dir: The journal's directory.
        out_dir: Where ``<episode_id>.ipynb`` files go (created if missing).
        include_ended: Also write episodes that ended normally.
        progress: Show a progress bar (``None``: only on a terminal).

    Returns:
        The notebooks written.
    """
    from tqdm import tqdm  # the text bar: works in a terminal and in a notebook alike

    from .export import write_notebook

    entries = [e for e in read_journals(journal_dir) if include_ended or not e.ended]
    written = []
    for entry in tqdm(entries, desc="recover", unit="episode", disable=_no_bar(progress)):
        name = entry.path.name.removesuffix(JOURNAL_SUFFIX) + ".ipynb"
        written.append(write_notebook(entry.notebook(), Path(out_dir) / name))
    return written


def _no_bar(progress: bool | None) -> bool | None:
    # tqdm's disable=None means "only when writing to a terminal".
    return None if progress is None else not progress
