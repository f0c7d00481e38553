"""The bwrap level for a kernel forked from a template: its own namespaces and private mounts.

A template serving the ``bwrap`` level runs inside bubblewrap itself (the read-only allow-list
root, no network, its own PID namespace), with its pool's directory bound read-write and the
capabilities to make namespaces. Each child then takes what a cold bwrap kernel gets of its
own, in a few milliseconds instead of a bubblewrap start:

- new mount, IPC, network (unless the network is allowed) and PID namespaces;
- the pool's directory covered by an empty read-only tmpfs, with only this episode's socket
  directory, connection file (read-only) and working directory bound back;
- /tmp and /dev/shm bound to the episode's byte budget (else size-capped tmpfs);
- a fresh /proc of its PID namespace, with /proc/sys and friends read-only as bwrap has them;
- a small init as PID 1 that reaps orphans and ends the namespace (every process of the
  episode) when the kernel exits.

Standard library only: the template loads this file directly, without the rest of kernelenv.
"""

from __future__ import annotations

import ctypes
import os
import stat

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWPID = 0x20000, 0x08000000, 0x40000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
# bwrap's --proc makes these read-only: root without capabilities could write some sysctls.
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None, target.encode(),
            fstype.encode() if fstype else None, flags, data.encode() if data else None,
        ),
        f"mount {target}",
    )  # fmt: skip


def _bind(fd: int, target: str, read_only: bool) -> None:
    """Bind the file or folder open at ``fd`` (opened before anything covered it) at ``target``."""
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def mount_points(parent: str) -> list[str]:
    """Mount points at or below ``parent`` in this mount namespace, one entry per mount (a
    point mounted twice is listed twice), from /proc/self/mountinfo."""
    prefix = parent.rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Octal escapes (a space is \040) in the mount point field.
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def _make_mount_point(path: str, like_dir: bool) -> None:
    os.makedirs(path if like_dir else os.path.dirname(path), exist_ok=True)
    if not like_dir and not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _cover(place: str, source_fd: int | None, size_bytes: int) -> None:
    """Put the episode's folder (or a ``size_bytes`` tmpfs) at ``place``, keeping what was
    mounted below it (a virtual environment, or the pool's covered directory under /tmp)
    as it was: each outermost mount is bound back with everything on it and its own flags."""
    points = [p for p in set(mount_points(place)) if p != place.rstrip("/")]
    outermost = [p for p in points if not any(p.startswith(q + "/") for q in points)]
    kept = [(p, os.open(p, os.O_PATH), os.path.isdir(p)) for p in outermost]
    if source_fd is not None:
        _bind(source_fd, place, read_only=False)
    else:
        _mount("tmpfs", place, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_bytes},mode=1777")
    for path, fd, is_dir in kept:
        try:
            _make_mount_point(path, is_dir)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        finally:
            os.close(fd)


def enter(spec: dict) -> None:
    """Unshare and build the private mounts (in the forked child, before its init is forked).

    ``spec``: ``hide`` (the pool's directory), ``rw`` and ``ro`` (paths bound back below it),
    ``tmp``/``shm`` (the episode's folders, or None) with ``tmp_bytes``/``shm_bytes``, and
    ``network`` (keep the template's network namespace).
    """
    flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID
    if not spec.get("network"):
        flags |= CLONE_NEWNET  # else every episode of the pool would share one loopback
    _check(_libc.unshare(flags), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    hide = spec["hide"]
    wanted = [(p, False) for p in spec.get("rw", ())] + [(p, True) for p in spec.get("ro", ())]
    # A path inside another bound one comes with it.
    wanted = [(p, ro) for p, ro in wanted
              if not any(q != p and (p + "/").startswith(q.rstrip("/") + "/") for q, _ in wanted)]  # fmt: skip
    opened = [(p, ro, os.open(p, os.O_PATH)) for p, ro in wanted]
    sources = {name: os.open(spec[name], os.O_PATH | os.O_DIRECTORY) if spec.get(name) else None
               for name in ("tmp", "shm")}  # fmt: skip
    try:
        _detach_others(hide, [p for p, _ in wanted])
        _mount("tmpfs", hide, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for path, read_only, fd in opened:
            _make_mount_point(path, stat.S_ISDIR(os.fstat(fd).st_mode))
            _bind(fd, path, read_only)
        _mount(None, hide, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        _cover("/tmp", sources["tmp"], int(spec.get("tmp_bytes") or 256 << 20))
        _cover("/dev/shm", sources["shm"], int(spec.get("shm_bytes") or 64 << 20))
    finally:
        for fd in [fd for _, _, fd in opened] + [fd for fd in sources.values() if fd is not None]:
            os.close(fd)


def _detach_others(hide: str, own: list[str]) -> None:
    """Detach the mounts below ``hide`` that are not this episode's: the other episodes'
    file systems, which the host mounted in the pool's directory and which reached the
    template by propagation (so that each child can bind its own). Covered, they would still
    be listed in /proc/self/mountinfo, and each copy would keep its file system, with what the
    other episode wrote, in memory after that episode ended."""
    own = [p.rstrip("/") for p in own]

    def is_own(point: str) -> bool:
        return any(point == p or point.startswith(p + "/") or p.startswith(point + "/")
                   for p in own)  # fmt: skip

    root = hide.rstrip("/")
    others = {p for p in mount_points(hide) if p != root and not is_own(p)}
    for point in sorted(others, key=len, reverse=True):  # the deepest first
        if _libc.umount2(point.encode(), MNT_DETACH) != 0:
            errno = ctypes.get_errno()
            if errno not in (22, 2):  # EINVAL, ENOENT: gone with one detached above it
                raise OSError(errno, f"umount {point}: {os.strerror(errno)}")


def mount_proc() -> None:
    """A /proc of the new PID namespace (run by its PID 1), with bwrap's read-only parts."""
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READ_ONLY:
        path = "/proc/" + name
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def run_init(kernel_pid: int) -> None:
    """PID 1 of the episode: reap every orphan; when the kernel exits, exit with its status
    (128 + N for signal N, as bubblewrap reports it), which ends every process left."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
        if pid == kernel_pid:
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)
