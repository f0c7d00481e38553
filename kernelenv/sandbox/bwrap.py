"""The bubblewrap command line: an allow-list of what a kernel's interpreter needs, nothing else.

The sandbox's root is empty but for read-only binds of ``/usr``, a few ``/etc`` files, the
interpreter (every hop of its symlink chain, libpython, the standard library) and its virtual
environment, and kernelenv's package directory alone (graders import it) — never the source
checkout around it, its ``.git``, or any copy of the task library. The episode's own socket
directory, connection file and working directory are the only host paths bound writable, so
other pools' connection files are unreachable wherever pools live.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# /etc entries a Python kernel needs: dynamic loader, time zone, user and host names,
# certificates, mime types, fonts. The rest (shadow, ssh keys, pip.conf, gitconfig...) stays out.
ETC_ALLOW = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "passwd", "group",
    "nsswitch.conf", "hosts", "host.conf", "mime.types", "ssl", "ca-certificates", "fonts",
    "os-release", "debian_version", "locale.alias", "matplotlibrc", "alternatives",
    "resolv.conf", "gai.conf",
)  # fmt: skip

# Merged-/usr distributions make these symlinks into /usr; older ones have real directories.
USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

# Asked of the kernel's interpreter itself (it may not be the server's): where it lives.
LAYOUT_CODE = r"""
import importlib.util, json, os, sys, sysconfig
cfg = {}
try:
    for line in open(os.path.join(sys.prefix, "pyvenv.cfg")):
        if "=" in line:
            k, v = line.split("=", 1); cfg[k.strip()] = v.strip()
except OSError:
    pass
paths = sysconfig.get_paths()
base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
spec = importlib.util.find_spec("kernelenv")
print(json.dumps({
    "executable": sys.executable,
    "prefix": sys.prefix, "base_prefix": sys.base_prefix,
    "stdlib": paths["stdlib"], "platstdlib": paths["platstdlib"],
    "site": sorted({paths["purelib"], paths["platlib"]}),
    "base_site": sorted({base["purelib"], base["platlib"]}),
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "ldlibrary": sysconfig.get_config_var("INSTSONAME"),
    "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
    "system_site": cfg.get("include-system-site-packages", "false") == "true",
    "path": sys.path,
    "kernelenv": list(spec.submodule_search_locations or []) if spec else [],
}))
"""


@functools.cache
def interpreter_layout(python: str) -> dict:
    """Where ``python`` keeps its binary, libraries and packages (asked once per interpreter).

    Raises:
        OSError: the interpreter could not be run or did not answer.
    """
    try:
        result = subprocess.run(
            [python, "-c", LAYOUT_CODE], capture_output=True, text=True, timeout=60,
            check=True, cwd="/",
        )  # fmt: skip
        return json.loads(result.stdout)
    except (subprocess.SubprocessError, ValueError) as exc:
        raise OSError(f"could not ask {python} where it lives: {exc}") from exc


@dataclass
class Binds:
    """What a sandbox shows of the host: read-only binds, symlinks and masked folders."""

    ro: list[str] = field(default_factory=list)
    symlinks: list[tuple[str, str]] = field(default_factory=list)  # (target, link)
    masks: list[str] = field(default_factory=list)  # an empty read-only tmpfs over them
    dropped_path_entries: list[str] = field(default_factory=list)

    def covers(self, path: str | Path) -> bool:
        """Whether ``path`` is inside something bound."""
        return any(_inside(path, root) for root in self.ro)

    def add_ro(self, path: str | Path) -> None:
        if not self.covers(path):
            self.ro.append(str(path))


def _inside(path: str | Path, root: str | Path) -> bool:
    return Path(path).is_relative_to(root)


def _symlink_chain(path: str) -> list[str]:
    """``path`` and every symlink hop to its target (each hop must exist inside the sandbox)."""
    chain, current = [], Path(path)
    for _ in range(40):
        chain.append(str(current))
        if not current.is_symlink():
            break
        current = Path(os.path.normpath(current.parent / os.readlink(current)))
    return chain


def _add_chain(binds: Binds, path: str) -> None:
    for hop in _symlink_chain(path):
        if binds.covers(hop):
            continue
        if os.path.islink(hop):
            binds.symlinks.append((os.readlink(hop), hop))
        elif os.path.exists(hop):
            binds.ro.append(hop)


def task_copies(tree: str | Path) -> list[str]:
    """Copies of kernelenv's task library directly inside a bound package tree.

    The wheel ships them as ``kernelenv/_tasks``; an editable install puts that copy in
    site-packages beside the checkout's package, where ``__file__`` never points.
    """
    candidate = Path(tree) / "kernelenv" / "_tasks"
    return [str(candidate)] if candidate.is_dir() else []


def system_binds(layout: dict, extra_readable: Sequence[str] = ()) -> Binds:
    """The read-only allow-list for a kernel run by the interpreter ``layout`` describes."""
    return _system_binds(json.dumps(layout, sort_keys=True), tuple(extra_readable))


@functools.cache
def _system_binds(layout_json: str, extra_readable: tuple[str, ...]) -> Binds:
    # Cached: about 10 ms of stat calls, on every kernel start otherwise.
    layout = json.loads(layout_json)
    binds = Binds(ro=["/usr"])
    for link in USR_LINKS:
        if os.path.islink(link):
            binds.symlinks.append((os.readlink(link), link))
        elif os.path.isdir(link):
            binds.ro.append(link)
    binds.ro += [f"/etc/{name}" for name in ETC_ALLOW if os.path.lexists(f"/etc/{name}")]
    _add_chain(binds, layout["executable"])
    if layout["shared"] and layout["libdir"] and layout["ldlibrary"]:
        _add_chain(binds, str(Path(layout["libdir"]) / layout["ldlibrary"]))
    if layout["prefix"] != layout["base_prefix"]:
        binds.add_ro(layout["prefix"])  # the venv: bin, pyvenv.cfg, site-packages
    # The standard library (with lib-dynload), not the rest of the base installation.
    for stdlib in (layout["stdlib"], layout["platstdlib"]):
        binds.add_ro(stdlib)
    site = list(layout["site"])
    for base_site in layout["base_site"]:
        if layout["system_site"] or layout["prefix"] == layout["base_prefix"]:
            binds.add_ro(base_site)
            site.append(base_site)
        elif binds.covers(base_site) and os.path.isdir(base_site):
            binds.masks.append(base_site)  # the stdlib bind brought other packages in
    # kernelenv's package directory alone: an editable install points into a checkout,
    # whose tasks/ and .git hold every solution and grader.
    for package in layout["kernelenv"]:
        binds.add_ro(package)
        site.append(str(Path(package).parent))
    for path in extra_readable:
        if os.path.exists(path):
            binds.add_ro(path)
    for tree in dict.fromkeys(site):
        binds.masks += [copy for copy in task_copies(tree) if binds.covers(copy)]
    for entry in layout["path"]:
        if entry and os.path.isdir(entry) and not binds.covers(entry):
            binds.dropped_path_entries.append(entry)
    return binds


def bwrap_args(
    python: str,
    *,
    work: str | Path,
    run_dir: str | Path | None = None,
    connection_file: str | Path | None = None,
    episode_root: str | Path | None = None,
    episode_tmp: str | Path | None = None,
    episode_shm: str | Path | None = None,
    tmp_bytes: int = 256 * 1024**2,
    shm_bytes: int = 64 * 1024**2,
    allow_network: bool = False,
    hidden: Sequence[str | Path] = (),
    extra_readable: Sequence[str] = (),
) -> list[str]:
    """The ``bwrap`` command in front of a kernel command run by ``python``.

    Later mounts cover earlier ones, so the order is: /proc, /dev, /tmp and /dev/shm (the
    episode's own folders, else size-capped tmpfs), the read-only allow-list (a venv under /tmp
    is bound over the private /tmp), the masks, the episode's byte budget, its socket directory
    (in the budget when there is one), connection file and working directory; last, the
    sandbox's root and /dev are remounted read-only (bwrap makes both writable tmpfs with no
    cap otherwise).

    Args:
        python: The kernel's interpreter (asked where it lives, once).
        work: The kernel's working directory, bound read-write.
        run_dir: Its socket directory (ipc transport), bound read-write.
        connection_file: Its connection file, bound read-only.
        episode_root: The episode's byte budget (holding ``work``), bound read-write.
        episode_tmp: A folder bound at /tmp (the episode's byte budget), or None for a
            ``tmp_bytes`` tmpfs.
        episode_shm: A folder bound at /dev/shm, or None for a ``shm_bytes`` tmpfs.
        tmp_bytes: Size of /tmp without ``episode_tmp``.
        shm_bytes: Size of /dev/shm without ``episode_shm``.
        allow_network: Keep the host's network namespace.
        hidden: Folders shown empty where the allow-list would show them.
        extra_readable: More host paths bound read-only (data folders).
    """
    args = _sandbox_args(
        python, allow_network=allow_network, hidden=hidden, extra_readable=extra_readable,
        tmp=(episode_tmp, tmp_bytes), shm=(episode_shm, shm_bytes),
    )  # fmt: skip
    # The budget first: the socket folder and the connection file may be inside it.
    if episode_root is not None:  # at its host path too: live forks of the kernel live there
        args += ["--bind", str(episode_root), str(episode_root)]
    if run_dir is not None:
        args += ["--bind", str(run_dir), str(run_dir)]
    if connection_file is not None:
        args += ["--ro-bind", str(connection_file), str(connection_file)]
    args += ["--bind", str(work), str(work)]
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    args += [
        "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",
        # ipykernel exits when JPY_PARENT_PID is not its parent, which a PID namespace
        # breaks; --die-with-parent does that job instead. PID 1 (bubblewrap's init, its
        # real parent) turns ipykernel's parent polling off without a console notice.
        "--setenv", "JPY_PARENT_PID", "1",
        "--chdir", str(work), "--",
    ]  # fmt: skip
    return args


def _sandbox_args(
    python: str,
    *,
    allow_network: bool,
    hidden: Sequence[str | Path],
    extra_readable: Sequence[str],
    tmp: tuple[str | Path | None, int],
    shm: tuple[str | Path | None, int],
    capabilities: Sequence[str] = (),
) -> list[str]:
    """What every bwrap sandbox here has: namespaces, /proc, /dev, /tmp and /dev/shm (a
    folder, or a tmpfs of that size), the read-only allow-list and its masks."""
    binds = system_binds(interpreter_layout(python), extra_readable)
    if binds.dropped_path_entries:
        log.debug("not bound in the sandbox (on sys.path): %s", binds.dropped_path_entries)
    args = [
        "bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", "kernelenv", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    ]  # fmt: skip
    for capability in capabilities:
        args += ["--cap-add", capability]
    args += ["--proc", "/proc", "--dev", "/dev"]
    if not allow_network:
        args.append("--unshare-net")
    for place, (folder, size) in (("/tmp", tmp), ("/dev/shm", shm)):
        if folder is not None:
            args += ["--bind", str(folder), place]
        else:
            args += ["--size", str(size), "--tmpfs", place]
    for target, link in binds.symlinks:
        args += ["--symlink", target, link]
    for path in binds.ro:
        args += ["--ro-bind", path, path]
    masks = [*binds.masks, *(str(p) for p in hidden if binds.covers(p) and os.path.isdir(p))]
    for path in dict.fromkeys(masks):
        args += ["--tmpfs", path, "--remount-ro", path]
    return args


def template_bwrap_args(
    python: str,
    *,
    pool_root: str | Path,
    allow_network: bool = False,
    hidden: Sequence[str | Path] = (),
    extra_readable: Sequence[str] = (),
) -> list[str]:
    """The ``bwrap`` command in front of a template serving the bwrap level.

    The template's sandbox is a kernel's (the same allow-list, masks and namespaces) with the
    pool's directory bound read-write, where every episode's folders are, and the two
    capabilities its children need to make namespaces and mounts of their own
    (:mod:`kernelenv.sandbox.namespaces`) before they drop every capability for good. The
    pool's directory must be a shared mount (:func:`~kernelenv.sandbox.episode_fs.share_mount`)
    so that the episodes' byte budgets, mounted later by the host, show here too.
    """
    root = str(Path(pool_root).absolute())
    args = _sandbox_args(
        python, allow_network=allow_network, extra_readable=extra_readable,
        hidden=[p for p in hidden if str(Path(p).absolute()) != root],
        tmp=(None, 16 * 1024**2), shm=(None, 1024**2),
        capabilities=("CAP_SYS_ADMIN", "CAP_SETPCAP"),
    )  # fmt: skip
    args += ["--bind", root, root, "--remount-ro", "/dev", "--remount-ro", "/"]
    args += ["--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp", "--chdir", root, "--"]
    return args
