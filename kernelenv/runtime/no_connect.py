"""A seccomp filter that refuses ``connect()``: what a graded attempt's process installs on itself
before the attempt's code runs.

An attempt runs in a throwaway fork of a warm kernel, so it holds that kernel's session key and
knows its socket paths: it connected to the kernel's own shell socket and had the warm kernel
run code (found by an outside red team). A process may always make its own seccomp filter
stricter (with ``no_new_privs``); the filter is inherited by whatever it starts and cannot be
lifted. Attempts need no connection (at ``bwrap`` there is no network but the loopback):
``socketpair``, pipes and asyncio's self-pipe still work.

Refused with ``EPERM``: ``connect``, ``io_uring_setup`` (a ring connects without the syscall),
x32 syscalls, and any syscall made through another architecture's entry (``int 0x80``).
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
_IO_URING_SETUP = 425

# machine -> (AUDIT_ARCH_*, connect's number)
_ARCHES = {
    "x86_64": (0xC000003E, 42),
    "aarch64": (0xC00000B7, 203),
}

# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06


def _program(arch: int, connect: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions; seccomp_data holds nr at offset 0 and arch at 4."""
    deny = SECCOMP_RET_ERRNO | 1  # EPERM
    return [
        (_LD_W_ABS, 0, 0, 4),
        (_JEQ_K, 0, 5, arch),  # another architecture's entry: refused
        (_LD_W_ABS, 0, 0, 0),
        (_JGE_K, 3, 0, _X32_BIT),
        (_JEQ_K, 2, 0, connect),
        (_JEQ_K, 1, 0, _IO_URING_SETUP),
        (_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (_RET_K, 0, 0, deny),
    ]


def supported() -> bool:
    """Whether this machine's architecture has a filter here."""
    return platform.machine() in _ARCHES


def refuse_connections() -> None:
    """Install the filter on this process (and what it starts from now on).

    Raises:
        OSError: the kernel refused the filter, or this architecture has none here.
    """
    machine = platform.machine()
    if machine not in _ARCHES:
        raise OSError(f"no connect() filter for {machine}")
    instructions = _program(*_ARCHES[machine])
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
