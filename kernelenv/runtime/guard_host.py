"""The guard host: one process per pool that runs the frame guards of all its kernels.

A frame guard (:mod:`.frame_guard`) relays a kernel's channels, so it holds eleven descriptors
a kernel (three listening sockets, four relayed connections of two ends each). In the process
that drives the kernels, next to about fifteen of ZMQ's own, that capped a server at about 600
sessions under a hard open-file limit of 20,000. Here the guards have a process (and an
open-file limit) of their own, and their relaying costs that process's CPU, not the server's
event loop.

The owner talks to the host over a socket pair, a JSON line each way per request (``open`` a
guard for a kernel, ``close`` it). The host ends when that socket reaches its end, so it dies
with its owner, even a SIGKILLed one; the guards' folders are in the pool's root, removed with
it (or reaped with a crashed owner's). If the host dies, its kernels lose their connections
(their steps fail, as for a dead kernel) and the next guard asked for starts a new host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

from ..errors import KernelStartError
from .frame_guard import FrameGuard
from .open_files import raise_open_file_limit

log = logging.getLogger(__name__)

# How long the owner waits for the host to answer a request (a slow one fails alone).
REQUEST_TIMEOUT_S = 30.0
# Where kernelenv is (as template_host's: not imported from there, which loads the sandbox's
# settings, a tenth of a second of the host's start).
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


class HostedGuard:
    """The guard of one kernel, run by a :class:`GuardHost`; ``prefix`` is the ``ip`` its
    client connects to instead of the kernel's."""

    def __init__(self, host: GuardHost, prefix: str, generation: int) -> None:
        self.host = host
        self.prefix = prefix
        self._generation = generation
        self._closed = False

    @property
    def alive(self) -> bool:
        """Whether its host still runs (the guard's connections end with it)."""
        return self._generation == self.host._generation and self.host.alive

    async def aclose(self) -> None:
        """Stop the guard and close its connections. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self.host._close_guard(self.prefix, self._generation)


class GuardHost:
    """The owner's side of the guard host (see the module docstring).

    Args:
        directory: Where the guards' socket folders go (the pool's ``guards`` folder, no
            kernel can reach it).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()
        # Which host a guard belongs to: a guard of a host that died went with it.
        self._generation = 0
        # Requests are numbered and answers say which they answer: a caller cancelled while
        # it waited leaves its answer unread, and the next caller skips it.
        self._next_id = 0
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Start the host ahead of the first guard (else the first guard starts it)."""
        if self._closed:
            raise KernelStartError("the frame guard host is closed (its pool is)")
        if not self.alive:
            self._reap()
            self._spawn()

    def _spawn(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_PARENT), env.get("PYTHONPATH")) if p
        )
        try:
            # Its own session: a Ctrl-C to the owner's terminal must not end the guards
            # before the owner has closed its kernels.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kernelenv.runtime.guard_host", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            ours.close()
            raise KernelStartError(f"the frame guard host could not be started: {exc}") from exc
        finally:
            theirs.close()
        self._sock = ours
        self._streams = None
        self._generation += 1

    async def open(
        self, kernel_ip: str, ports: dict[str, Any], max_message_bytes: int
    ) -> HostedGuard:
        """A guard for the kernel listening at ``kernel_ip`` (see :meth:`FrameGuard.start`).

        Raises:
            KernelStartError: the host failed (it is replaced for the next request) or the
                guard could not start (no such kernel socket, or not a socket).
        """
        reply, generation = await self._request({
            "op": "open", "ip": kernel_ip, "max_message_bytes": max_message_bytes,
            "ports": {k: v for k, v in ports.items() if k.endswith("_port")},
            "parent": str(self.directory),
        })  # fmt: skip
        if "error" in reply:
            raise KernelStartError(f"the kernel's frame guard did not start: {reply['error']}")
        return HostedGuard(self, reply["prefix"], generation)

    async def _close_guard(self, prefix: str, generation: int) -> None:
        if generation != self._generation or not self.alive:
            return  # its host is gone, and its connections with it
        with contextlib.suppress(KernelStartError):
            await self._request({"op": "close", "prefix": prefix})

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def _request(self, request: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Send ``request``, return the host's answer to it.

        Raises:
            KernelStartError: the host is closed, broke (it is replaced: its kernels lose
                their connections) or did not answer in time (it is kept: one slow request
                must not end every session of the pool).
        """
        async with self._lock:
            self.start()
            self._next_id += 1
            request_id = request["id"] = self._next_id
            try:
                if self._streams is None:
                    self._streams = await asyncio.open_unix_connection(sock=self._sock)
                reader, writer = self._streams
                with anyio.fail_after(REQUEST_TIMEOUT_S):
                    writer.write(json.dumps(request).encode() + b"\n")
                    await writer.drain()
                    while True:
                        line = await reader.readline()
                        if not line:
                            raise ConnectionError("it ended")
                        reply = json.loads(line)
                        if reply.get("id") == request_id:
                            return reply, self._generation
                        if "prefix" in reply:  # a guard nobody waits for any more
                            orphan = {"op": "close", "prefix": reply["prefix"], "id": 0}
                            writer.write(json.dumps(orphan).encode() + b"\n")
            except TimeoutError as exc:
                raise KernelStartError("the frame guard host did not answer in time") from exc
            except (OSError, ValueError) as exc:
                log.warning("the frame guard host failed (%r): it is replaced", exc)
                await self._stop()
                raise KernelStartError(f"the frame guard host failed: {exc!r}") from exc

    def _reap(self) -> None:
        """Forget a host that ended (its streams, its socket)."""
        if self._streams is not None:
            self._streams[1].transport.abort()
            self._streams = None
        elif self._sock is not None:
            self._sock.close()
        self._sock = None

    async def _stop(self) -> None:
        self.kill_now()
        self._reap()
        await asyncio.sleep(0)  # an aborted transport closes its socket a loop turn later

    def kill_now(self) -> None:
        """Kill the host and wait for it (no event loop needed)."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                process.send_signal(signal.SIGKILL)
        if process is not None:
            with contextlib.suppress(Exception):
                process.wait(timeout=10)

    async def aclose(self) -> None:
        """End the host (its guards and their connections). Safe to call twice."""
        self._closed = True
        async with self._lock:
            with anyio.CancelScope(shield=True):
                process = self.process
                self._reap()  # the host sees its end of the socket pair close, and exits
                if process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        await anyio.to_thread.run_sync(process.wait, 5)
                    self.kill_now()


# -- the host's side ----------------------------------------------------------------------


async def _serve(sock: socket.socket) -> None:
    """Answer the owner's requests until its end of the socket closes."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    guards: dict[str, FrameGuard] = {}
    try:
        while line := await reader.readline():
            request = json.loads(line)
            reply: dict[str, Any]
            if request["op"] == "open":
                guard = FrameGuard(int(request["max_message_bytes"]))
                try:
                    prefix = await guard.start(
                        request["ip"], request["ports"], parent=Path(request["parent"])
                    )
                except OSError as exc:
                    reply = {"error": str(exc)}
                else:
                    guards[prefix] = guard
                    reply = {"prefix": prefix}
            else:  # close
                closing = guards.pop(request["prefix"], None)
                if closing is not None:
                    await closing.aclose()
                reply = {"cut": closing.cut if closing is not None else 0}
            reply["id"] = request.get("id")
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
    except (OSError, ValueError, KeyError) as exc:  # the owner broke off, or is not one
        log.warning("guard host: the owner's connection failed: %r", exc)
    finally:
        await asyncio.gather(*(g.aclose() for g in guards.values()), return_exceptions=True)
        writer.transport.abort()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(format="kernelenv guard host: %(message)s", level=logging.WARNING)
    raise_open_file_limit()  # eleven descriptors a kernel
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:  # relaying is all this process does: uvloop's streams cost less CPU a message
        import uvloop
    except ImportError:
        asyncio.run(_serve(sock))
    else:
        uvloop.run(_serve(sock))


if __name__ == "__main__":
    main()
