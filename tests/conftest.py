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
    return [p for p in children if _running(p)]


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):  # it exited while we looked (psutil may leak the OSError)
        return False


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
    procs, dirs = wait_for_no_leaks(timeout_s=20.0)
    left = []
    for proc in procs:  # do not leave them to the next run, even when failing
        try:
            seen = (proc.pid, proc.cmdline()[:4])
            proc.kill()
        except psutil.NoSuchProcess:  # it was exiting after all: not left behind
            continue
        left.append(seen)
    assert not left, f"processes left behind by the test session: {left}"
    assert not dirs, f"pool directories left behind by the test session: {dirs}"


@pytest.fixture(scope="module")
async def shared_pool(anyio_backend):
    """One kernel pool per test module (kernel starts cost about half a second each)."""
    from kernelenv import KernelPool

    async with KernelPool(size=2) as pool:
        yield pool


# -- small datasets in the HumanEval and MBPP layouts, imported as a task library ----------

HUMANEVAL_RECORDS = [
    {   # plain asserts, and an `assert True` that must give no free credit
        "task_id": "HumanEval/0",
        "prompt": 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n',
        "canonical_solution": "    return a + b\n",
        "entry_point": "add",
        "test": "METADATA = {}\n\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n"
        "    assert candidate(-1, 1) == 0\n    assert True\n    assert candidate(10, 5) == 15\n"
        "    assert candidate(0, 0) == 0\n",
    },
    {   # a helper in the prompt, random inputs, a call outside its assert, a tuple result
        "task_id": "HumanEval/1",
        "prompt": "def helper(x):\n    return x * 2\n\n\n"
        'def doubled(xs: list) -> tuple:\n    """Double every item with helper()."""\n',
        "canonical_solution": "    return tuple(helper(x) for x in xs)\n",
        "entry_point": "doubled",
        "test": "import random\n\n\ndef check(candidate):\n    assert candidate([1, 2]) == (2, 4)\n"
        "    for _ in range(3):\n        xs = [random.randint(0, 9) for _ in range(4)]\n"
        "        assert candidate(xs) == tuple(helper(x) for x in xs)\n"
        "    result = candidate([])\n    assert result == ()\n",
    },
    {   # a reference that fails its own tests: skipped at import, with its line
        "task_id": "HumanEval/2",
        "prompt": 'def one() -> int:\n    """Return 1."""\n',
        "canonical_solution": "    return 2\n",
        "entry_point": "one",
        "test": "def check(candidate):\n    assert candidate() == 1\n",
    },
]

MBPP_RECORDS = [
    {
        "task_id": 11,
        "text": "Write a python function to remove first and last occurrence of a given "
        "character from the string.",
        "code": "def remove_Occ(s,ch): \r\n    for i in range(len(s)): \r\n        if (s[i] == ch): "
        "\r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n"
        "    for i in range(len(s) - 1,-1,-1):  \r\n        if (s[i] == ch): \r\n"
        "            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    return s ",
        "test_list": ['assert remove_Occ("hello","l") == "heo"',
                      'assert remove_Occ("abcda","a") == "bcd"',
                      'assert remove_Occ("PHP","P") == "H"'],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 12,
        "text": "Write a function to find the smallest and largest numbers of a list.",
        "code": "def min_max(xs):\n    return (min(xs), max(xs))",
        "test_list": ["assert min_max([3, 1, 2]) == (1, 3)",
                      "assert min_max(DATA) == (-4.5, 10)",
                      "assert min_max([7]) == (7, 7)"],
        "test_setup_code": "DATA = [10, -4.5, 3]",
        "challenge_test_list": [],
    },
]


@pytest.fixture(scope="session")
def humaneval_records() -> list[dict]:
    """The HumanEval-format records the imported library is made from."""
    return HUMANEVAL_RECORDS


@pytest.fixture(scope="session")
def imported_library(tmp_path_factory) -> Path:
    """A task library imported with ``kernelenv tasks import`` from the records above."""
    import gzip
    import json

    from kernelenv.cli import main

    root = tmp_path_factory.mktemp("datasets")
    with gzip.open(root / "humaneval.jsonl.gz", "wt") as sink:
        sink.writelines(json.dumps(r) + "\n" for r in HUMANEVAL_RECORDS)
    (root / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MBPP_RECORDS))
    library = root / "library"
    budgets = ["--step-timeout", "4", "--grade-timeout", "20"]
    assert main(["tasks", "import", "humaneval", str(root / "humaneval.jsonl.gz"),
                 "--out", str(library), *budgets]) == 0
    assert main(["tasks", "import", "mbpp", str(root / "mbpp.jsonl"),
                 "--out", str(library), *budgets]) == 0
    return library
