"""A pool of kernels started in advance and refilled in the background, so reset never waits for a boot."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import sys
import tempfile
import weakref
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
from jupyter_client.kernelspec import KernelSpecManager

from ..errors import EnvClosedError, KernelStartError, PoolExhaustedError
from ..sandbox.bwrap import template_bwrap_args
from ..sandbox.cgroup import reap_stale_cgroups
from ..sandbox.config import SandboxConfig, as_sandbox_config, scrub_env
from ..sandbox.episode_fs import reap_stale_mounts, share_mount
from ..sandbox.kernelspec import AGENT_KERNEL_ARGS, KERNEL_NAME, kernel_spec, write_kernel_spec
from ..sandbox.landlock import landlock_abi
from ..sandbox.template_provisioner import template_problem
from .guard_host import GuardHost
from .kernel import Kernel
from .livefork import become_subreaper, fork_kernel
from .open_files import raise_open_file_limit
from .template_host import KernelTemplate

log = logging.getLogger(__name__)

ROOT_PREFIX = "kernelenv-"
# Kernel starts that may fail in a row before acquire() raises instead of waiting on.
MAX_START_FAILURES = 3
OWNER_FILE = "owner.pid"
OWNER_LOCK = "owner.lock"  # flocked by the owner while it lives (see reap_stale_roots)
# Template starts that may fail in a row before the pool stops trying and stays cold.
MAX_TEMPLATE_FAILURES = 3

LaunchMode = Literal["template", "cold"]


class KernelPool:
    """Kernels started ahead of time, handed out by :meth:`acquire`, stopped off the hot path.

    Many envs can share one pool (in one event loop). The pool keeps ``size`` ready kernels,
    starting replacements in the background as kernels are taken, at most
    ``max_concurrent_starts`` at a time (a start costs about half a CPU-second).

    Args:
        size: How many ready kernels to keep. 0 starts kernels only on demand.
        python: Interpreter that runs the kernels (default: this one).
        start_timeout_s: Generous on purpose: a few percent of process starts stall for seconds.
        warmup_code: Code run in each kernel before it is handed out (e.g. pre-imports).
        extra_env: Environment variables added to each kernel's environment.
        max_concurrent_starts: Kernel starts running at once.
        root_dir: Where kernel directories go (default: a fresh temporary directory).
        sandbox: Containment of the kernels: a :class:`~kernelenv.sandbox.config.SandboxConfig`, a
            level name (``auto``, ``bwrap``, ``limits``, ``none``) or None for the default,
            the strongest level this machine supports (a fallback warns).
        hidden_paths: Directories a bwrap kernel sees empty (besides the pool's own root).
        launch: ``template`` (the default): kernels are forked from a template process that
            has done the imports, IPython's start-up and ``warmup_code`` once (a fresh kernel
            in tens of ms), each contained as a cold one at its level; while the template is
            starting again after a crash, kernels start cold, with a logged warning.
            ``cold``: every kernel boots its own interpreter (about half a CPU-second each).
    """

    def __init__(
        self,
        size: int = 1,
        *,
        python: str | None = None,
        start_timeout_s: float = 60.0,
        warmup_code: str | None = None,
        extra_env: dict[str, str] | None = None,
        max_concurrent_starts: int = 2,
        root_dir: str | os.PathLike[str] | None = None,
        sandbox: SandboxConfig | str | None = None,
        hidden_paths: Sequence[str | os.PathLike[str]] = (),
        launch: LaunchMode = "template",
    ) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        if launch not in ("template", "cold"):
            raise ValueError(f"launch must be 'template' or 'cold', not {launch!r}")
        self.size = size
        # abspath, not realpath: `../.venv/bin/python` must stay the venv's interpreter, and a
        # path with `..` in it does not exist inside a bwrap sandbox (only what it names is bound).
        self.python = os.path.abspath(python or sys.executable)
        self.start_timeout_s = start_timeout_s
        self.warmup_code = warmup_code
        self.extra_env = dict(extra_env or {})
        self.max_concurrent_starts = max(1, max_concurrent_starts)
        self._root_parent = root_dir
        # Resolved now, so a fallback warning points at the code that made the pool.
        self.sandbox = as_sandbox_config(sandbox).resolved()
        self.hidden_paths = [Path(p) for p in hidden_paths]
        self.root: Path | None = None
        self.guards: GuardHost | None = None  # runs the kernels' frame guards (see guard_host)
        self.kernel_name = KERNEL_NAME
        self._spec_manager: KernelSpecManager | None = None
        self._ready: asyncio.Queue[Kernel] | None = None
        self._start_slots: asyncio.Semaphore | None = None
        self._starting = 0
        self._waiting = 0
        self._live: set[Kernel] = set()
        self._hosting: set[Kernel] = set()  # released, kept for their forks (hosting_count)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._start_failures = 0
        self._last_start_error: KernelStartError | None = None
        self._closed = False
        self._finalizer: weakref.finalize | None = None
        self._owner_lock: Any = None  # the open owner.lock, held while the pool lives
        problem = template_problem(self.sandbox) if launch == "template" else None
        if problem is not None:
            log.warning("kernel templates not used: %s", problem)
        self.launch: LaunchMode = "cold" if problem is not None else launch
        self._template: KernelTemplate | None = None
        self._template_task: asyncio.Task[None] | None = None
        self._template_failures = 0
        self._template_was_ready = False

    # -- properties -----------------------------------------------------------------------

    @property
    def ready_count(self) -> int:
        """Kernels ready to hand out right now."""
        return self._ready.qsize() if self._ready is not None else 0

    @property
    def starting_count(self) -> int:
        """Kernels being started right now."""
        return self._starting

    @property
    def template(self) -> KernelTemplate | None:
        """The template kernels are forked from (None with ``launch="cold"``)."""
        return self._template

    @property
    def kernels_dir(self) -> Path:
        """The folder holding this pool's kernelspec (for ``KernelSpecManager`` / nbclient)."""
        self._ensure_started()
        assert self.root is not None
        return self.root / "kernelspecs"

    @property
    def spec_manager(self) -> KernelSpecManager:
        """A ``KernelSpecManager`` that finds this pool's kernelspec."""
        self._ensure_started()
        assert self._spec_manager is not None
        return self._spec_manager

    # -- life cycle -----------------------------------------------------------------------

    async def __aenter__(self) -> KernelPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Create the pool's directory and begin filling it. Called by the first acquire."""
        self._ensure_started()
        self._refill()

    def _ensure_started(self) -> None:
        if self._closed:
            raise EnvClosedError("this KernelPool is closed; create a new one")
        if self.root is not None:
            return
        raise_open_file_limit()
        reap_stale_roots(self._root_parent)
        reap_stale_cgroups()
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir=self._root_parent))
        self._owner_lock = _claim(self.root)  # before the owner file: see reap_stale_roots
        (self.root / OWNER_FILE).write_text(str(os.getpid()))
        spec = kernel_spec(
            python=self.python,
            extra_env=self.extra_env,
            sandbox=self.sandbox,
            # Neighbouring episodes, answer keys, and whatever the owner adds.
            hidden_paths=[
                str(p) for p in (self.root, *self.hidden_paths)
                if p.is_dir()
            ],
            template_socket=(
                str(self.root / "template" / "template.sock") if self.launch == "template" else None
            ),
            template_root=str(self.root),
        )
        self.write_spec(spec)
        if self.launch == "template":
            env = {**os.environ, **spec["env"]}
            env.pop("JPY_SESSION_NAME", None)
            if self.sandbox.level != "none":
                env = scrub_env(env, self.sandbox.secret_env_patterns)
            self._template = KernelTemplate(
                self.root / "template", python=self.python, kernel_args=AGENT_KERNEL_ARGS,
                env=env, warmup_code=self.warmup_code, wrapper=self._template_wrapper(),
            )  # fmt: skip
        self._spec_manager = KernelSpecManager(kernel_dirs=[str(self.root / "kernelspecs")])
        # Up beside the template, not on the first kernel's path.
        self.guards = GuardHost(self.root / "guards")
        self.guards.start()
        self._ready = asyncio.Queue()
        self._start_slots = asyncio.Semaphore(self.max_concurrent_starts)
        # If the program exits without closing the pool, still kill kernels and remove files.
        self._finalizer = weakref.finalize(
            self, _emergency_cleanup, self.root, self._live, self._template, self.guards
        )

    def _template_wrapper(self) -> list[str]:
        """At the bwrap level, the template runs in a sandbox of its own (see
        :mod:`kernelenv.sandbox.namespaces`), seeing the pool's directory as a shared mount."""
        if self.sandbox.level != "bwrap":
            return []
        assert self.root is not None
        share_mount(self.root)
        return template_bwrap_args(
            self.python, pool_root=self.root, allow_network=self.sandbox.allow_network,
            hidden=[str(p) for p in self.hidden_paths if p.is_dir()],
            extra_readable=self.sandbox.extra_readable,
        )  # fmt: skip

    def write_spec(self, spec: dict) -> None:
        """(Re)write the kernelspec kernels of this pool are started from."""
        assert self.root is not None
        write_kernel_spec(self.root / "kernelspecs", spec, self.kernel_name)

    async def acquire(self, timeout_s: float | None = None) -> Kernel:
        """Take a ready kernel, waiting for one to start if none is ready.

        Raises:
            PoolExhaustedError: no kernel became ready within ``timeout_s``.
            KernelStartError: kernels keep failing to start.
        """
        self._ensure_started()
        assert self._ready is not None
        self._waiting += 1
        try:
            self._refill()
            while True:
                try:
                    with anyio.fail_after(timeout_s):
                        kernel = await self._next_ready()
                except TimeoutError as exc:
                    raise PoolExhaustedError(
                        f"no kernel became ready within {timeout_s} s; "
                        "raise the pool size or the timeout"
                    ) from exc
                if await kernel.is_alive() and not kernel.relay_lost:
                    return kernel
                log.warning("pooled kernel %s died (or lost its frame guard) while idle; "
                            "discarding it", kernel.kernel_id)  # fmt: skip
                self.release(kernel)
        finally:
            self._waiting -= 1
            self._refill()

    async def _next_ready(self) -> Kernel:
        assert self._ready is not None
        while True:
            # Starts that keep failing must surface as an error, not as a wait until the
            # acquire timeout (a replacement start is usually already under way by now).
            if self._start_failures >= MAX_START_FAILURES and self._ready.empty():
                failures, self._start_failures = self._start_failures, 0
                raise KernelStartError(
                    f"{failures} kernel starts failed in a row; the last: {self._last_start_error}"
                ) from self._last_start_error
            with contextlib.suppress(TimeoutError):
                with anyio.fail_after(0.5):
                    return await self._ready.get()
            self._refill()

    async def fork(self, kernel: Kernel, n: int, *, timeout_s: float = 30.0) -> list[Kernel]:
        """Fork a live kernel of this pool ``n`` times (see :mod:`kernelenv.runtime.livefork`).

        The children are this pool's kernels (released and cleaned up like any other) and keep
        its containment: they inherit the parent's resource limits and, with pids and memory
        cgroups, each gets its own. Under bubblewrap a child lives in its parent's sandbox (its files
        under the parent's directory), so the parent's kernel is kept until its last child
        is released.

        Raises:
            ForkError: the kernel cannot be forked faithfully now (the message says why).
            EnvClosedError: the pool is closed.
        """
        if self._closed or self.root is None:
            raise EnvClosedError("this KernelPool is closed")
        _become_subreaper()
        # A child lives where its parent can write: in the parent's byte budget when it has
        # one (bound in its sandbox, writable under Landlock; the family shares the budget),
        # else in the parent's socket directory under bubblewrap (short names: IPC paths must
        # fit in 107 bytes).
        if kernel.fs is not None:
            base, nested = kernel.fs.root / "f", True
        elif self.sandbox.level == "bwrap":
            base, nested = kernel.run_dir / "f", True
        else:
            base, nested = self.root, False
        limited = self.sandbox.level != "none"
        memory_mb = self.sandbox.episode_memory_mb if limited else None
        children = await fork_kernel(
            kernel,
            n,
            base=base,
            max_processes=self.sandbox.max_processes if limited else None,
            memory_bytes=memory_mb * 1024 * 1024 if memory_mb is not None else None,
            timeout_s=timeout_s,
        )
        self._live.update(children)
        if nested:
            for child in children:
                kernel.keep_for(child)
        return children

    def release(self, kernel: Kernel) -> None:
        """Give a kernel back: it is shut down and its directory removed, in the background
        (once its last live fork is, if it has any: see :attr:`hosting_count`)."""
        if kernel.hosting_forks:
            self._hosting.add(kernel)
        self._spawn(self._retire(kernel))

    async def _retire(self, kernel: Kernel) -> None:
        try:
            await kernel.shutdown()
        finally:
            self._live.discard(kernel)

    @property
    def hosting_count(self) -> int:
        """Released kernels still running because live forks of theirs live in their sandbox.

        They hold a kernel's memory like an episode does, so a server counts them against its
        session limit: else closing each parent of a chain of forks would keep them all alive.
        """
        self._hosting = {kernel for kernel in self._hosting if kernel.hosting_forks}
        return len(self._hosting)

    async def aclose(self) -> None:
        """Stop every kernel the pool started and remove its directory. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.root is None:
            return
        starts = [t for t in self._tasks if t.get_name() == "kernelenv-start"]
        for task in starts:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.gather(*(k.shutdown() for k in list(self._live)), return_exceptions=True)
            self._live.clear()
            if self._template_task is not None:
                self._template_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._template_task
            if self._template is not None:
                await self._template.aclose()
            if self.guards is not None:
                await self.guards.aclose()
            reap_stale_mounts(self.root)  # any a failed shutdown left
            shutil.rmtree(self.root, ignore_errors=True)
            if self._owner_lock is not None:
                self._owner_lock.close()
            if self._finalizer is not None:
                self._finalizer.detach()

    # -- background work ------------------------------------------------------------------

    def _refill(self) -> None:
        if self._closed or self._ready is None:
            return
        self._ensure_template()
        # Kernels for waiting callers come first: refilling to ``size`` at the same time would
        # halve the CPU of the starts they wait for (a drained reset took 1.6x a cold start).
        # acquire() refills once it has its kernel.
        wanted = max(self.size, self._waiting)
        while self._ready.qsize() + self._starting < wanted:
            self._starting += 1
            self._spawn(self._start_one(), name="kernelenv-start")

    def _ensure_template(self) -> None:
        """Start the template, or restart it if it died (kernels start cold meanwhile)."""
        template = self._template
        if template is None or template.alive:
            return
        if self._template_task is not None and not self._template_task.done():
            return
        if self._template_failures >= MAX_TEMPLATE_FAILURES:
            return
        if template.process is not None:  # it ran, and died
            log.warning(
                "kernel template died (exit code %s); restarting it, kernels start cold "
                "(~0.5 s each) until it is back", template.exit_code,
            )  # fmt: skip
        self._template_task = asyncio.get_running_loop().create_task(
            self._start_template(template), name="kernelenv-template"
        )

    async def _start_template(self, template: KernelTemplate) -> None:
        await template.aclose()  # a dead one's socket file
        try:
            await template.start(timeout_s=self.start_timeout_s)
        except Exception as exc:  # noqa: BLE001  (any failure: kernels start cold, loudly)
            self._template_failures += 1
            give_up = self._template_failures >= MAX_TEMPLATE_FAILURES
            log.warning("kernel template failed to start (%s)%s", exc,
                        "; giving up: kernels start cold" if give_up else "")  # fmt: skip
            return
        self._template_failures = 0
        self._template_was_ready = True

    async def _wait_first_template(self) -> None:
        """Until the first template is up, wait for it (it takes about one cold start); after
        a template died, kernels start cold instead of waiting for its replacement."""
        task = self._template_task
        if task is not None and not task.done() and not self._template_was_ready:
            await asyncio.wait([task])

    async def _start_one(self) -> None:
        assert self._start_slots is not None and self._ready is not None and self.root
        try:
            async with self._start_slots:
                await self._wait_first_template()
                kernel = await Kernel.start(
                    root=self.root,
                    guards=self.guards,
                    kernel_name=self.kernel_name,
                    spec_manager=self.spec_manager,
                    start_timeout_s=self.start_timeout_s,
                    disk_budget_bytes=self._disk_budget_bytes(),
                    disk_inodes=self.sandbox.episode_inodes,
                    abstract_ipc=self._abstract_ipc(),
                )
                self._live.add(kernel)
                if self.warmup_code and not _forked(kernel):  # a template ran it already
                    await kernel.execute(self.warmup_code, timeout_s=self.start_timeout_s, silent=True)
        except KernelStartError as exc:
            self._start_failures += 1
            self._last_start_error = exc
            log.error("kernel start failed: %s", exc)
            return
        finally:
            self._starting -= 1
        self._start_failures = 0
        if self._closed:
            await self._retire(kernel)
        else:
            self._ready.put_nowait(kernel)

    def _abstract_ipc(self) -> bool:
        """Whether kernels bind abstract sockets: at ``limits`` with Landlock's scoping (ABI 6),
        which keeps other kernels from connecting to them (see ``kernel.ipc_endpoint``)."""
        return (
            self.sandbox.level == "limits" and self.sandbox.landlock and landlock_abi() >= 6
        )

    def _disk_budget_bytes(self) -> int | None:
        if self.sandbox.level == "none" or self.sandbox.episode_disk_mb is None:
            return None
        return self.sandbox.episode_disk_mb * 1024 * 1024

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _forked(kernel: Kernel) -> bool:
    """Whether ``kernel`` was forked from a template (rather than started cold)."""
    return getattr(kernel.manager.provisioner, "forked", False)


def _emergency_cleanup(
    root: Path, live: set[Kernel], template: KernelTemplate | None, guards: GuardHost
) -> None:
    """At interpreter exit: kill what is left and remove the pool's directory (no event loop)."""
    guards.kill_now()
    if template is not None:  # its kernels die with it
        template.kill_now()
    for kernel in list(live):
        kill_now = getattr(kernel.manager.provisioner, "kill_now", None)
        if kill_now is not None:  # a sandboxed kernel: also its detached processes
            with contextlib.suppress(Exception):
                kill_now()
            continue
        pid = kernel.pid
        if pid:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # jupyter_client starts kernels in a new session
    with contextlib.suppress(OSError):
        reap_stale_mounts(root)  # episodes' byte budgets: rmtree cannot remove mount points
    shutil.rmtree(root, ignore_errors=True)


def reap_stale_roots(parent: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove pool directories left by processes that died without cleaning up.

    An owner is alive while it holds the flock on its directory's ``owner.lock``: a lock,
    unlike a pid, means the same in every PID namespace (a pid from another namespace may
    name no process here, or another one). A directory whose owner file is not written yet
    is being created, and is left alone.
    """
    removed = []
    for root in Path(parent or tempfile.gettempdir()).glob(ROOT_PREFIX + "*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if owner == os.getpid() or _owner_alive(root):
            continue
        reap_stale_mounts(root)  # before rmtree, which cannot remove a mount point
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


def _claim(root: Path) -> Any:
    """Take the owner lock of a new pool directory; it is released when this process dies."""
    lock = open(root / OWNER_LOCK, "wb")  # noqa: SIM115 (held open for the pool's life)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lock


def _owner_alive(root: Path) -> bool:
    try:
        fd = os.open(root / OWNER_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # an owner file with no lock beside it: its owner died before claiming
    except OSError:
        return True  # cannot tell: keep it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held (BlockingIOError), or cannot tell: keep it
        return True
    finally:
        os.close(fd)
    return False


_subreaper = False


def _become_subreaper() -> None:
    """Forks are re-parented to this process (not to init, which reaps nothing here)."""
    global _subreaper
    if not _subreaper:
        become_subreaper()
        _subreaper = True
