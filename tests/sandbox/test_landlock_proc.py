"""At level ``limits`` a kernel's /proc rules hold while the kernel runs.

A Landlock rule holds an inode, and procfs makes a new inode each time it looks an entry up
again: once memory pressure reclaims the cached ``/proc/<pid>``, a rule on it would match
nothing and the kernel would lose its own /proc folder. The rules keep the entries open.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kernelenv.sandbox.cgroup import EpisodeCgroup, memory_cgroup_parent
from kernelenv.sandbox.landlock import landlock_abi, landlock_rules

pytestmark = pytest.mark.skipif(landlock_abi() < 1, reason="no Landlock here")

# Waits for a line, applies the kernel's rules (in the memory cgroup the test made, so that its
# /proc/<pid> is cached there), then reads its own status after each further line.
RESTRICTED = """
import os, sys
from kernelenv.sandbox import landlock
sys.stdin.readline()
landlock.restrict(sys.argv[1:])
if os.environ.get("UNPIN"):  # the control: the rules as they would be without the pins
    for fd in landlock.PINNED:
        os.close(fd)
while sys.stdin.readline():
    try:
        print(open("/proc/self/status").read().split()[1], flush=True)
    except OSError as exc:
        print(type(exc).__name__, flush=True)
"""


def _reclaim(cgroup: Path) -> None:
    """Reclaim what the memory cgroup holds (its cached /proc entries too)."""
    if (cgroup / "memory.reclaim").exists():  # v2
        (cgroup / "memory.reclaim").write_text("1G")
    else:
        (cgroup / "memory.force_empty").write_text("1")


def _status_after_reclaim(rules: list[str], parent: Path, unpin: bool) -> list[str]:
    cgroup = EpisodeCgroup(uuid.uuid4().hex[:8], memory_bytes=1 << 30, memory_parent=parent)
    command = [sys.executable, "-c", RESTRICTED, *rules]
    env = {"PYTHONPATH": ":".join(sys.path), **({"UNPIN": "1"} if unpin else {})}
    try:
        with subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        ) as process:
            assert process.stdin is not None and process.stdout is not None
            cgroup.add(process.pid)
            seen = []
            for reclaim in (None, False, True):  # go (it applies the rules), read, reclaim, read
                if reclaim:
                    _reclaim(cgroup.memory_path)
                process.stdin.write("\n")
                process.stdin.flush()
                if reclaim is not None:
                    seen.append(process.stdout.readline().strip())
            process.kill()
        return seen
    finally:
        cgroup.remove()


def test_a_kernel_keeps_its_own_proc_folder_through_memory_reclaim(tmp_path) -> None:
    parent = memory_cgroup_parent()
    if parent is None:
        pytest.skip("no writable memory cgroup here")
    rules = landlock_rules(sys.executable, writable=[str(tmp_path)])
    # Without the pins the reclaim takes the cached /proc/<pid> (the control shows that it
    # does here), and its rule with it.
    control = _status_after_reclaim(rules, parent, unpin=True)
    if control[1] != "PermissionError":
        pytest.skip(f"a memory cgroup's reclaim keeps /proc's cache here ({control})")
    assert control[0].startswith("python")  # its own status, read before the reclaim
    assert _status_after_reclaim(rules, parent, unpin=False) == [control[0], control[0]]
