"""Shared fixtures: the async backend, a shared kernel pool, and leak checks on real processes."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from kernelenv.runtime.pool import OWNER_FILE, ROOT_PREFIX


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # Session scope lets async fixtures of any scope share one event loop.
    return "asyncio"


def kernel_processes() -> list[psutil.Process]:
    """Every live descendant of this test process (kernels and anything they started)."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    return [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def own_pool_dirs() -> list[Path]:
    """Pool directories this test process created and has not removed."""
    mine = []
    for root in Path(tempfile.gettempdir()).glob(ROOT_PREFIX + "*"):
        try:
            if int((root / OWNER_FILE).read_text()) == os.getpid():
                mine.append(root)
        except (OSError, ValueError):
            continue
    return mine


def wait_for_no_leaks(
    before: set[int] = frozenset(), dirs_before: set[Path] = frozenset(), timeout_s: float = 10.0
) -> tuple[list, list]:
    """Wait until no new child process and no new pool directory remains; return what is left."""
    deadline = time.monotonic() + timeout_s
    while True:
        procs = [
            p for p in kernel_processes()
            if p.pid not in before and not _belongs_to(p, dirs_before)
        ]
        dirs = [d for d in own_pool_dirs() if d not in dirs_before]
        if (not procs and not dirs) or time.monotonic() > deadline:
            return procs, dirs
        time.sleep(0.1)


def _belongs_to(proc: psutil.Process, roots: set[Path]) -> bool:
    """Whether ``proc`` is a kernel of one of the pools at ``roots`` (by its connection file)."""
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(str(root) in cmdline for root in roots)


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves a kernel process or a pool directory behind."""
    before = {p.pid for p in kernel_processes()}
    dirs_before = set(own_pool_dirs())
    yield
    procs, dirs = wait_for_no_leaks(before, dirs_before)
    assert not procs, f"processes left behind: {[(p.pid, p.cmdline()[:3]) for p in procs]}"
    assert not dirs, f"pool directories left behind: {dirs}"


@pytest.fixture(scope="session", autouse=True)
def journal_dir_for_tests(tmp_path_factory):
    """Servers started by tests (also as subprocesses) journal into a temporary directory."""
    from kernelenv.episodes.journal import JOURNAL_DIR_ENV

    before = os.environ.get(JOURNAL_DIR_ENV)
    os.environ[JOURNAL_DIR_ENV] = str(tmp_path_factory.mktemp("journal"))
    yield
    if before is None:
        os.environ.pop(JOURNAL_DIR_ENV, None)
    else:
        os.environ[JOURNAL_DIR_ENV] = before


@pytest.fixture(scope="session", autouse=True)
def session_leak_check():
    """After the whole run: no kernel processes and no pool directories of this process."""
    yield
    procs, dirs = wait_for_no_leaks()
    for proc in procs:  # do not leave them to the next run, even when failing
        proc.kill()
    assert not procs, f"processes left behind by the test session: {[p.pid for p in procs]}"
    assert not dirs, f"pool directories left behind by the test session: {dirs}"


@pytest.fixture(scope="module")
async def shared_pool(anyio_backend):
    """One kernel pool per test module (kernel starts cost about half a second each)."""
    from kernelenv import KernelPool

    async with KernelPool(size=2) as pool:
        yield pool
