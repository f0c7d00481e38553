"""Landlock for the ``limits`` level: a file allow-list, and signals kept inside the episode.

Run as a script in front of the kernel command (``python -I -S landlock.py [--ro PATH]...
[--rw PATH]... [--list PATH]... -- CMD...``; see :func:`landlock_args`), it restricts itself
and execs the command, which inherits the restriction with every child. Unprivileged
(Linux 5.13+); it uses what the running kernel's Landlock ABI offers: files (1+), truncation
(3+), device ioctls (5+), signals and abstract Unix sockets scoped to the episode (6+). TCP is
not restricted: ipykernel's subprocess-output pipe uses loopback TCP.

Landlock only grants; a hole is made by granting the siblings along the path and listing on the
parents: the hole's *names* stay listable, its files cannot be read. Stdlib only, so that it
starts in a few milliseconds without site-packages.

/proc: the kernel reads its own ``/proc/<pid>`` and the system-wide entries of
:data:`PROC_SYSTEM`, never another process's folder (command line, name, status) nor the
listing of /proc (every pid). Its forks (live forks, throwaway runs) have pids of their own,
outside the grant: their ``/proc/self`` cannot be read.
"""

from __future__ import annotations

import ctypes
import functools
import os
import stat
import sys

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # the same on every arch
RULE_PATH_BENEATH = 1
CREATE_RULESET_VERSION = 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1, 2, 4, 8
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
# Every right that changes a file or a folder: writing, removing, making, linking, truncating.
WRITE_RIGHTS = (REFER - 1) & ~(EXECUTE | READ_FILE | READ_DIR) | REFER | TRUNCATE
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ_RIGHTS = EXECUTE | READ_FILE | READ_DIR
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2
PR_SET_NO_NEW_PRIVS = 38

# "/proc/self" is resolved where the rules are applied, in the kernel itself (the exec wrapper
# keeps its pid; a template's child applies them after its fork): the rule lands on the
# kernel's own /proc/<pid>, with its threads (task/), /proc/thread-self, /proc/mounts, /proc/net.
PROC_SELF = "/proc/self"
# What ordinary code reads of /proc besides its own folder (psutil, glibc, numpy, os.getloadavg).
# Not /proc itself: listing it names every process. Not sched_debug, timer_list, locks,
# sysvipc (they name other processes), nor kallsyms, kcore, kmsg, cmdline and friends.
PROC_SYSTEM = (
    "cpuinfo", "meminfo", "stat", "uptime", "loadavg", "version", "filesystems", "sys", "cgroups",
    "swaps", "vmstat", "diskstats", "partitions", "pressure", "devices", "crypto",
)  # fmt: skip


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> int:
    """The Landlock ABI version this Linux offers (0: none)."""
    version = _libc().syscall(
        SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION)
    )
    return max(int(version), 0)


def _error(what: str) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"{what}: {os.strerror(errno)}")


PINNED: list[int] = []  # O_PATH descriptors keeping the /proc entries of the rules cached


class Ruleset:
    """A Landlock ruleset being built; :meth:`enforce` applies it to this process.

    ``handled``: the file rights it restricts (default: all this Linux knows; others stay as
    they were).
    """

    def __init__(self, handled: int | None = None) -> None:
        self.libc = _libc()
        self.abi = landlock_abi()
        if self.abi < 1:
            raise OSError("Landlock is not available on this Linux")
        rights = (1 << 13) - 1
        if self.abi >= 2:
            rights |= REFER
        if self.abi >= 3:
            rights |= TRUNCATE
        if self.abi >= 5:
            rights |= IOCTL_DEV
        if handled is not None:
            rights &= handled
        self.all_rights = rights
        scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if self.abi >= 6 else 0
        attr = _RulesetAttr(rights, 0, scoped)
        size = ctypes.sizeof(attr) if self.abi >= 6 else 8
        self.fd = self.libc.syscall(
            SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
        )
        if self.fd < 0:
            raise _error("landlock_create_ruleset")

    def allow(self, path: str, rights: int) -> None:
        """Grant ``rights`` beneath ``path`` (a missing path is skipped)."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                rights &= FILE_RIGHTS
            rule = _PathBeneath(rights & self.all_rights, fd)
            if self.libc.syscall(
                SYS_ADD_RULE, self.fd, RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)
            ):
                raise _error(f"landlock_add_rule {path}")
        except BaseException:
            os.close(fd)
            raise
        if path.startswith("/proc/"):
            # A rule holds an inode, and procfs makes a new inode each time it looks an entry
            # up again: once the cached entry is reclaimed (memory pressure), the rule would
            # match nothing. An open descriptor keeps the entry, so its inode, cached.
            PINNED.append(fd)
        else:
            os.close(fd)

    def enforce(self) -> None:
        """Restrict this process (and everything it execs or forks) to the rules."""
        if self.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _error("prctl(PR_SET_NO_NEW_PRIVS)")
        if self.libc.syscall(SYS_RESTRICT_SELF, self.fd, ctypes.c_uint32(0)) != 0:
            raise _error("landlock_restrict_self")
        os.close(self.fd)


def landlock_rules(
    python: str,
    *,
    writable: list[str],
    hidden: list[str] = (),  # type: ignore[assignment]
    extra_readable: list[str] = (),  # type: ignore[assignment]
) -> list[str]:
    """The rules (``--ro``/``--rw``/``--list`` and a path, flattened) for a kernel run by ``python``.

    Readable: the same allow-list a bwrap kernel sees (:func:`kernelenv.sandbox.bwrap.system_binds`),
    the kernel's own /proc folder and /proc's system-wide entries (:data:`PROC_SYSTEM`), and
    /dev (not /dev/shm: the host's is shared and unbounded); writable: ``writable`` (the
    episode's files and sockets) and the character devices; holes: the task-library copies
    the allow-list masks and ``hidden``. The holes are expanded here, once per
    process, so that applying the rules is only adding them.
    """
    rules = list(_read_rules(python, tuple(map(str, hidden)), tuple(map(str, extra_readable))))
    for device in ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/ptmx", "/dev/pts"):
        rules += ["--rw", device]
    for path in writable:
        rules += ["--rw", str(path)]
    return rules


def landlock_args(rules: list[str]) -> list[str]:
    """An exec wrapper applying ``rules``, to put in front of any command (a Python start)."""
    return [sys.executable, "-I", "-S", __file__, *rules, "--"]


def landlock_boot_code(rules_file: str) -> str:
    """Python code that applies the rules in ``rules_file`` to the process running it.

    Put in front of a kernel's ``-c`` boot code, it saves the wrapper's interpreter start:
    the kernel restricts itself before it runs anything an agent sent.
    """
    return f"import runpy; runpy.run_path({__file__!r})['restrict_from_file']({rules_file!r})\n"


def write_rules(rules: list[str], path: str | os.PathLike[str]) -> None:
    """Store ``rules`` for :func:`restrict_from_file` (NUL-separated: paths may hold anything)."""
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as file:
        file.write("\0".join(rules))


@functools.cache
def _read_rules(python: str, hidden: tuple[str, ...], extra: tuple[str, ...]) -> list[str]:
    from .bwrap import interpreter_layout, system_binds

    layout = interpreter_layout(python)
    binds = system_binds(layout, extra)
    holes = [*binds.masks, *hidden, "/dev/shm"]
    rules: list[str] = []
    for tree in [*binds.ro, "/dev"]:
        _expand(tree, holes, rules)
    for entry in (PROC_SELF, *(f"/proc/{name}" for name in PROC_SYSTEM)):
        rules += ["--ro", entry]
    # sys.path entries (an editable install's checkout) must be listable for imports to
    # find kernelenv in them; their files stay unreadable.
    for entry in layout["path"]:
        if entry and not binds.covers(entry) and binds.covers(os.path.join(entry, "kernelenv")):
            rules += ["--list", entry]
    return rules


def _expand(tree: str, holes: list[str], rules: list[str]) -> None:
    """Rules making ``tree`` readable but for the files beneath each of ``holes``.

    Landlock only grants: a hole is made by granting the siblings along its path and listing
    on its parents (the hole's names stay listable, its files do not).
    """
    inside = [h for h in holes if os.path.commonpath([tree, h]) == tree]
    if not inside:
        rules += ["--ro", tree]
        return
    if tree in inside:
        return
    rules += ["--list", tree]
    try:
        names = sorted(os.listdir(tree))
    except OSError:
        return
    for name in names:
        child = os.path.join(tree, name)
        # A rule on a symlink lands on its target (venv lib64 -> lib): it would fill the hole.
        if not os.path.islink(child):
            _expand(child, inside, rules)


def restrict(rules: list[str]) -> None:
    """Apply ``rules`` (option, path, option, path...) to this process and its future children."""
    ruleset = Ruleset()
    rights = {"--ro": READ_RIGHTS, "--rw": ruleset.all_rights, "--list": READ_DIR}
    for option, value in zip(rules[::2], rules[1::2], strict=True):
        if option not in rights:
            raise ValueError(f"landlock: unknown option {option}")
        ruleset.allow(value, rights[option])
    ruleset.enforce()


def restrict_from_file(path: str) -> None:
    """Apply the rules :func:`write_rules` stored at ``path``."""
    with open(path, encoding="utf-8", errors="surrogateescape") as file:
        restrict(file.read().split("\0"))


def main(argv: list[str]) -> None:
    """Apply the rules before ``--``, then exec the command after it."""
    split = argv.index("--")
    restrict(argv[:split])
    for fd in PINNED:  # the kernel exec'd next keeps them (and its /proc rules working)
        os.set_inheritable(fd, True)
    command = argv[split + 1 :]
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
