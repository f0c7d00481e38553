"""The host side of a template process: start it, know whether it lives, stop it.

See :mod:`kernelenv.runtime.template` for what runs inside. A template dies with its owner
(``PR_SET_PDEATHSIG``), and its kernels die with it, so a killed server leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import KernelStartError
from ..sandbox.watchdog import descendants
from .template import READY_LINE

# Runs the template without ``-m`` (which would put the template's own cwd on the children's
# sys.path): ``-c`` puts "" there, as for a cold kernel.
TEMPLATE_BOOT = "from kernelenv.runtime.template import main; main()"
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


class KernelTemplate:
    """One template process, owned by this process.

    Args:
        directory: A private directory for its socket and warm-up file (created if missing).
        python: The interpreter (the kernels' own).
        kernel_args: ipykernel command-line settings, as in the kernelspec's ``argv``.
        env: The template's environment (a kernel's, so start-up settings such as
            ``PYTHONDONTWRITEBYTECODE`` apply to its children too).
        warmup_code: Code run once in the template; its imports and names are in every kernel.
        preimports: Modules imported in the template besides the defaults.
        wrapper: A command the template runs under (the bwrap level's
            :func:`~kernelenv.sandbox.bwrap.template_bwrap_args`).
    """

    def __init__(
        self,
        directory: Path,
        *,
        python: str,
        kernel_args: Sequence[str],
        env: Mapping[str, str],
        warmup_code: str | None = None,
        preimports: Sequence[str] = (),
        wrapper: Sequence[str] = (),
    ) -> None:
        self.directory = Path(directory)
        self.socket_path = self.directory / "template.sock"
        self.python = python
        self.kernel_args = list(kernel_args)
        self.env = dict(env)
        self.warmup_code = warmup_code
        self.preimports = list(preimports)
        self.wrapper = list(wrapper)
        self.process: subprocess.Popen[bytes] | None = None
        self._ready = False

    @property
    def pid(self) -> int | None:
        """The template's pid, while it runs."""
        return self.process.pid if self.alive else None  # type: ignore[union-attr]

    @property
    def alive(self) -> bool:
        """Whether the template process runs."""
        return self.process is not None and self.process.poll() is None

    @property
    def ready(self) -> bool:
        """Whether the template runs and forks kernels."""
        return self._ready and self.alive

    @property
    def exit_code(self) -> int | None:
        """The template's exit code, once it has exited."""
        return None if self.process is None else self.process.poll()

    async def start(self, timeout_s: float = 60.0) -> None:
        """Start the template and wait until it forks kernels.

        Raises:
            KernelStartError: it exited or did not become ready within ``timeout_s``.
        """
        self._ready = False
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-c", TEMPLATE_BOOT, "--socket", str(self.socket_path)]
        if self.preimports:
            command += ["--preimport", ",".join(self.preimports)]
        if self.warmup_code:
            warmup_file = self.directory / "warmup.py"
            warmup_file.write_text(self.warmup_code)
            command += ["--warmup-file", str(warmup_file)]
        if self.wrapper:
            command = [*self.wrapper, *command, "--in-sandbox"]
        env = dict(self.env)
        if os.path.abspath(self.python) != os.path.abspath(sys.executable):
            # Another interpreter may not have kernelenv installed: the template needs it.
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH")) if p
            )
        # Popen from the event loop's thread: PR_SET_PDEATHSIG fires when the *thread* that
        # forked the template exits, so never from a worker thread.
        try:
            self.process = subprocess.Popen(
                [*command, "--", *self.kernel_args], stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL, env=env, cwd=self.directory, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise KernelStartError(f"the kernel template could not be started: {exc}") from exc
        try:
            async with asyncio.timeout(timeout_s):
                line = await _read_line(self.process.stdout)  # type: ignore[arg-type]
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, TimeoutError):
                raise KernelStartError(f"the kernel template was not ready in {timeout_s} s") from exc
            raise
        if line.strip() != READY_LINE:
            code = self.process.poll()
            await self.aclose()
            raise KernelStartError(f"the kernel template failed to start (exit code {code})")
        self._ready = True

    def kill_now(self) -> None:
        """Kill the template and its kernels, without an event loop, and wait until they are
        gone: the pool removes their folders next, which a kernel still starting would trip on
        (kernels die with their template, but asynchronously)."""
        process = self.process
        if process is not None and process.poll() is None:
            tree = descendants(process.pid) - {process.pid}
            with contextlib.suppress(OSError):
                process.send_signal(signal.SIGKILL)
            for pid in tree:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 2.0
            while any(_running(pid) for pid in tree) and time.monotonic() < deadline:
                time.sleep(0.005)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            if process.stdout is not None:
                process.stdout.close()
        with contextlib.suppress(OSError):
            self.socket_path.unlink()

    async def aclose(self) -> None:
        """Stop the template; its kernels die with it. Safe to call twice."""
        await asyncio.to_thread(self.kill_now)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (neither gone nor a zombie waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _read_line(stream: object) -> bytes:
    """One line from a pipe, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    fd = stream.fileno()  # type: ignore[attr-defined]
    os.set_blocking(fd, False)
    buffer = b""
    while not buffer.endswith(b"\n"):
        future = loop.create_future()
        loop.add_reader(fd, lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            loop.remove_reader(fd)
        try:
            chunk = os.read(fd, 256)
        except BlockingIOError:
            continue
        if not chunk:
            break
        buffer += chunk
    return buffer
