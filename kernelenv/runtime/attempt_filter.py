"""What a graded attempt's process installs on itself before the attempt's code runs: a seccomp
filter (no ``connect()``, no signal or limit aimed at its warm kernel) and Landlock rules.

An attempt runs in a throwaway fork of a warm kernel, so it holds that kernel's session key and
knows its socket paths: it connected to the kernel's own shell socket and had the warm kernel
run code (found by an outside red team). It also knows its parent: a ``SIGSTOP`` to it (or to
one of its threads) stalled every attempt behind it until the host's budget ran out, and
``prlimit`` on it could starve it of descriptors. A process may always make its own seccomp
filter stricter (with ``no_new_privs``); the filter is inherited by whatever it starts and
cannot be lifted. Attempts need no connection (at ``bwrap`` there is no network but the
loopback): ``socketpair``, pipes and asyncio's self-pipe still work, and so do signals to the
attempt's own processes.

Refused with ``EPERM``:

- ``connect``, ``io_uring_setup`` (a ring connects without the syscall), x32 syscalls, and any
  syscall made through another architecture's entry (``int 0x80``);
- ``kill``, ``tkill``, ``tgkill``, ``rt_sigqueueinfo``, ``rt_tgsigqueueinfo``, ``prlimit64``,
  ``sched_setaffinity``, ``sched_setscheduler``, ``sched_setparam`` and ``sched_setattr``
  whose target is a protected pid: the warm kernel, any of its threads, its process group
  (negated), or -1 (every process the attempt may signal);
- ``pidfd_send_signal`` (a pidfd can come from opening ``/proc/<pid>``, which no filter sees)
  and ``ioprio_set``;
- ``setpriority`` other than on the calling process itself (its target can be a group or a
  whole user);
- ``fcntl`` and ``ioctl`` commands that name a descriptor's owner or its signal
  (:data:`OWNER_COMMANDS`): the owner is sent a signal as I/O comes.

What no syscall number shows, a path, :func:`confine_writes` covers with Landlock: the
attempt changes files only in its own folders (not its warm kernel's ``/proc`` entries), and
signals nothing outside its own processes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
_X32_BIT = 0x40000000


class _Arch:
    """An architecture's audit id and the syscall numbers the filter looks at."""

    def __init__(self, audit: int, refused: tuple[int, ...], by_pid: tuple[int, ...],
                 setpriority: int, by_command: tuple[int, ...]) -> None:  # fmt: skip
        self.audit = audit
        self.refused = refused  # always
        self.by_pid = by_pid  # first argument a pid (or -pgid, or -1)
        self.setpriority = setpriority  # allowed only as (PRIO_PROCESS, 0): the caller
        self.by_command = by_command  # fcntl, ioctl: refused for OWNER_COMMANDS


# What names a descriptor's owner, who then gets a signal (of the owner's choosing, with
# F_SETSIG) as I/O comes: fcntl's F_SETOWN, F_SETSIG, F_SETOWN_EX; ioctl's FIOSETOWN, SIOCSPGRP.
# An attempt made the warm kernel a pipe's owner and stopped it with SIGSTOP (found by an
# outside red team).
# F_SETLEASE too: a lease holder makes whoever opens its file wait (45 s by default).
OWNER_COMMANDS = (8, 10, 15, 1024, 0x8901, 0x8902)


_ARCHES = {
    # refused: connect, io_uring_setup, pidfd_send_signal, ioprio_set;
    # by pid: kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo, prlimit64,
    # sched_setaffinity, sched_setscheduler, sched_setparam, sched_setattr
    # by command: fcntl, ioctl
    "x86_64": _Arch(
        0xC000003E, (42, 425, 424, 251), (62, 200, 234, 129, 297, 302, 203, 144, 142, 314), 141,
        (72, 16),
    ),
    "aarch64": _Arch(
        0xC00000B7, (203, 425, 424, 30), (129, 130, 131, 138, 240, 261, 122, 119, 118, 274), 140,
        (25, 29),
    ),
}

# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
# seccomp_data: nr at 0, arch at 4, then 64-bit args from 16; the low word of an argument is
# all the kernel reads of a pid_t or an int (little-endian: the first 4 bytes).
_NR, _ARCH, _ARG0, _ARG1 = 0, 4, 16, 24


def _program(arch: _Arch, protected: list[int]) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions (classic BPF jumps only forward, by a relative distance)."""
    allow = [(_RET_K, 0, 0, SECCOMP_RET_ALLOW)]
    deny = [(_RET_K, 0, 0, SECCOMP_RET_ERRNO | 1)]  # EPERM
    values = sorted({v & 0xFFFFFFFF for v in protected})
    # check_pid: arg0 is protected -> deny, else allow
    check_pid = [(_LD_W_ABS, 0, 0, _ARG0)]
    for i, value in enumerate(values):
        check_pid.append((_JEQ_K, len(values) - i, 0, value))  # past the rest and the allow
    check_pid += allow + deny
    # check_command: arg1 names an owner -> deny, else allow
    check_command = [(_LD_W_ABS, 0, 0, _ARG1)]
    for i, value in enumerate(OWNER_COMMANDS):
        check_command.append((_JEQ_K, len(OWNER_COMMANDS) - i, 0, value))
    check_command += allow + deny
    # check_self: (arg0, arg1) == (0, 0) -> allow, else deny
    check_self = [
        (_LD_W_ABS, 0, 0, _ARG0), (_JEQ_K, 0, 3, 0),
        (_LD_W_ABS, 0, 0, _ARG1), (_JEQ_K, 0, 1, 0),
    ] + allow + deny  # fmt: skip
    # The head's jumps go to [check_self][check_pid][check_command][deny], each block ending in
    # its returns; a distance counts from the instruction after the jump.
    head = [
        (_LD_W_ABS, 0, 0, _ARCH),
        ("arch", arch.audit, "deny"),
        (_LD_W_ABS, 0, 0, _NR),
        ("ge", _X32_BIT, "deny"),
        *(("eq", nr, "deny") for nr in arch.refused),
        ("eq", arch.setpriority, "self"),
        *(("eq", nr, "pid") for nr in arch.by_pid),
        *(("eq", nr, "command") for nr in arch.by_command),
        "allow",
    ]
    body: list[tuple[int, int, int, int]] = []
    n = len(head)
    starts = {"self": n, "pid": n + len(check_self)}
    starts["command"] = starts["pid"] + len(check_pid)
    starts["deny"] = starts["command"] + len(check_command)
    for index, item in enumerate(head):
        if item == "allow":
            body += allow
        elif isinstance(item[0], str):
            kind, k, target = item
            distance = starts[target] - index - 1
            if kind == "arch":  # not this architecture's entry: deny
                body.append((_JEQ_K, 0, distance, k))
            else:
                body.append((_JGE_K if kind == "ge" else _JEQ_K, distance, 0, k))
        else:
            body.append(item)
    program = body + check_self + check_pid + check_command + deny
    if len(program) > 4096 or any(max(jt, jf) > 255 for _, jt, jf, _ in program):
        raise OSError("the seccomp program is too long")
    return program


def supported() -> bool:
    """Whether this machine's architecture has a filter here."""
    return platform.machine() in _ARCHES


def warm_kernel_pids(pid: int, pgid: int, threads: list[int]) -> list[int]:
    """What an attempt must not signal: its warm kernel ``pid``, that kernel's ``threads``
    (``kill`` of a thread id reaches its process), its process group, and every process."""
    return [pid, *threads, -pgid, -1]


def install(protected: list[int] | None = None) -> None:
    """Install the filter on this process (and what it starts from now on).

    ``protected``: the pids no signal, limit or scheduling change may target
    (:func:`warm_kernel_pids`).

    Raises:
        OSError: the kernel refused the filter, or this architecture has none here.
    """
    machine = platform.machine()
    if machine not in _ARCHES:
        raise OSError(f"no attempt filter for {machine}")
    instructions = _program(_ARCHES[machine], protected or [-1])
    code = b"".join(struct.pack("HBBI", *insn) for insn in instructions)
    buffer = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    program = SockFprog(len(instructions), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    for args in ((PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                 (PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(program), 0, 0)):
        if libc.prctl(*[ctypes.c_ulong(a) for a in args]) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl({args[0]}): {os.strerror(errno)}")


def confine_writes(writable: list[str]) -> None:
    """Landlock, where Linux has it: this process (and what it starts) may change files only
    beneath ``writable``, and (ABI 6+) may signal no process outside it, through any path
    (``kill``, a descriptor's owner, a pidfd). Reading is left as it was.

    The seccomp filter sees syscall numbers, not paths: an attempt wrote its warm kernel's
    ``/proc/<pid>/oom_score_adj`` and had the memory cgroup's OOM killer take the kernel, and
    its ``/proc/<pid>/autogroup`` to lower its CPU share (found by an outside red team).
    """
    from .template import landlock

    if landlock.landlock_abi() < 1:  # type: ignore[attr-defined]
        return
    rules = landlock.Ruleset(handled=landlock.WRITE_RIGHTS)  # type: ignore[attr-defined]
    for path in writable:
        rules.allow(path, landlock.WRITE_RIGHTS)  # type: ignore[attr-defined]
    rules.enforce()
