"""The frame guard: a relay between a kernel's ZMQ sockets and this process's that bounds
every message the kernel sends as a whole, before this process holds it.

libzmq bounds one part of a message (``zmq.MAXMSGSIZE``) and the number of messages it queues
(``zmq.RCVHWM``), but not the number of parts of a message, and it hands out no part before
it holds them all: a kernel re-sending one 1 MiB buffer as a thousand parts made a server hold
gigabytes. So this process's sockets connect to the guard, a Unix socket beside the kernel's
(outside its sandbox), and the guard connects on to the kernel. It passes the bytes through
unchanged and reads the ZMTP 3 framing of what the kernel sends (a 64-byte greeting, then
frames: a flags byte, a 1- or 8-byte size, the body). A message of more than
``MAX_MESSAGE_PARTS`` parts or ``max_message_bytes`` bytes in all closes the connection
before its rest is read, as libzmq does with a part over ``MAXMSGSIZE``:
:class:`~kernelenv.runtime.limits.ConnectionWatch` replaces the socket and the step says that
output was lost. Reading stops while this process's socket does not take more (its queue is
full), so the guard holds at most one chunk a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# Parts of one message: Jupyter's are an identity or two, the delimiter, five JSON parts and
# the binary buffers of a comm or display message.
MAX_MESSAGE_PARTS = 64
# Room for what frames a message besides its parts' bodies.
_HEADER_SLACK_BYTES = 64 * 1024
# ZMTP commands (READY, PING...) are small; anything large is not a kernel talking.
MAX_COMMAND_BYTES = 64 * 1024
CHUNK_BYTES = 64 * 1024
# How long a connection waits for its kernel's socket to appear (a cold kernel's start).
KERNEL_BIND_WAIT_S = 60.0
GREETING_BYTES = 64
_MORE, _LONG, _COMMAND = 1, 2, 4
# Not stdin: kernelenv never allows input requests, so it never connects to it.
CHANNELS = ("shell", "iopub", "control")


class FrameError(ValueError):
    """What a kernel sent breaks the bounds (or is not ZMTP 3)."""


class FrameReader:
    """Follows the ZMTP 3 framing of one direction's bytes, fed in chunks of any size."""

    def __init__(self, max_message_bytes: int, max_parts: int = MAX_MESSAGE_PARTS) -> None:
        self.max_message_bytes = max_message_bytes + _HEADER_SLACK_BYTES
        self.max_parts = max_parts
        self._greeting = bytearray()
        self._header = bytearray()
        self._body_left = 0
        self._parts = 0
        self._bytes = 0

    def feed(self, data: bytes) -> None:
        """Account for ``data``, the next bytes of the stream.

        Raises:
            FrameError: a message is too large or has too many parts, or a command is too
                large, or the stream is not ZMTP 3.
        """
        i, n = 0, len(data)
        while i < n:
            if len(self._greeting) < GREETING_BYTES:
                take = min(GREETING_BYTES - len(self._greeting), n - i)
                self._greeting += data[i : i + take]
                i += take
                self._check_greeting()
            elif self._body_left:
                take = min(self._body_left, n - i)
                self._body_left -= take
                i += take
            else:
                self._header.append(data[i])
                i += 1
                if len(self._header) == (9 if self._header[0] & _LONG else 2):
                    self._frame(self._header[0], int.from_bytes(self._header[1:], "big"))
                    self._header.clear()

    def _check_greeting(self) -> None:
        greeting = self._greeting
        if greeting[:1] not in (b"", b"\xff") or (len(greeting) >= 10 and greeting[9] != 0x7F):
            raise FrameError("not a ZMTP greeting")
        if len(greeting) >= 11 and greeting[10] < 3:
            raise FrameError(f"ZMTP version {greeting[10]} (3 or later is needed)")

    def _frame(self, flags: int, size: int) -> None:
        if flags & _COMMAND:
            if size > MAX_COMMAND_BYTES:
                raise FrameError(f"a command of {size} bytes")
        else:
            self._parts += 1
            self._bytes += size
            if self._parts > self.max_parts:
                raise FrameError(f"a message of more than {self.max_parts} parts")
            if self._bytes > self.max_message_bytes:
                raise FrameError(f"a message of more than {self.max_message_bytes} bytes")
            if not flags & _MORE:
                self._parts = self._bytes = 0
        self._body_left = size


async def _connect_unix(target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream connection to the Unix socket ``target`` (a path, or ``\0name`` for an abstract
    one: connected here, since uvloop's ``open_unix_connection`` takes no abstract address).

    A socket file is in its kernel's sandbox, where agent code can swap it (or its folder, the
    kernel's socket directory) for a symbolic link to any socket on the host: both are opened
    without following links, the file must be a socket, and it is connected to through that
    descriptor. (The folders above belong to the pool, out of the sandbox's reach.)

    Raises:
        OSError: no such socket, or ``target`` is a link or not a socket (ELOOP, ENOTSOCK).
    """
    path_fd = None
    if not target.startswith("\0"):
        folder, name = os.path.split(target)
        no_follow = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
        folder_fd = os.open(folder or ".", no_follow | os.O_DIRECTORY)
        try:
            path_fd = os.open(name, no_follow, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
        try:
            mode = os.fstat(path_fd).st_mode
            if not stat.S_ISSOCK(mode):
                why = errno.ELOOP if stat.S_ISLNK(mode) else errno.ENOTSOCK
                raise OSError(why, f"not a socket: {os.strerror(why)}", target)
        except BaseException:
            os.close(path_fd)
            raise
        target = f"/proc/self/fd/{path_fd}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, target)
    except BaseException:
        sock.close()
        raise
    finally:
        if path_fd is not None:
            os.close(path_fd)
    return await asyncio.open_unix_connection(sock=sock, limit=CHUNK_BYTES)


class FrameGuard:
    """The guard of one kernel's channels (see the module docstring).

    Its sockets go in a private folder of its own (0700, in the pool's root), never beside the
    kernel's: a kernel's folders are in its sandbox's reach, and
    a kernel that replaced a guard's socket with its own would be connected to unguarded.

    Args:
        max_message_bytes: The largest message, all parts together.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.directory: Path | None = None
        self.prefix = ""
        self.max_message_bytes = max_message_bytes
        self._servers: list[asyncio.AbstractServer] = []
        self._pumps: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.cut = 0  # connections closed for breaking the bounds
        self._closed = False

    async def start(
        self, kernel_ip: str, ports: dict[str, int], *, parent: Path | None = None
    ) -> str:
        """Listen for each channel of the kernel's IPC sockets at ``{kernel_ip}-{port}``;
        returns the ``ip`` to connect to instead (same ports). The sockets go in a new folder
        in ``parent`` (a pool's, removed with it and reaped after a crash), else in the system's
        temporary directory."""
        if parent is not None:
            parent.mkdir(mode=0o700, exist_ok=True)
            self.directory = Path(tempfile.mkdtemp(prefix="g", dir=parent))
        else:
            self.directory = Path(tempfile.mkdtemp(prefix="kernelenv-guard-"))
        self.prefix = str(self.directory / "g")
        try:
            for channel in CHANNELS:
                port = ports[f"{channel}_port"]
                target = f"{kernel_ip}-{port}"
                if target.startswith("@"):  # ZMQ's spelling of an abstract socket; Python's:
                    target = "\0" + target[1:]
                # Known to aclose() before it serves: asyncio's server start awaits a loop turn
                # once serving, and a start cancelled there (a pool closing) returned no server,
                # whose listening socket stayed in the event loop until it closed.
                server = await asyncio.start_unix_server(
                    lambda r, w, target=target: self._accept(r, w, target),
                    path=f"{self.prefix}-{port}",
                    limit=CHUNK_BYTES,
                    start_serving=False,
                )
                self._servers.append(server)
                await server.start_serving()
        except BaseException:
            await self.aclose()
            raise
        return self.prefix

    def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str
    ) -> None:
        """Called as the connection is made, before any await: from then on aclose() knows it
        (a coroutine here would start a loop turn later, and a guard closing meanwhile would
        leave the socket to the garbage collector)."""
        if self._closed:  # accepted just before the guard closed: nothing to relay to
            writer.close()
            return
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._relay(reader, writer, target))
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str
    ) -> None:
        """Connect on to the kernel's socket and pump both ways."""
        try:
            kernel_reader, kernel_writer = await self._connect_kernel(target)
        except OSError:  # the kernel is gone: so is this connection
            await self._close((writer,))
            return
        if self._closed:  # closed while connecting: aclose() did not see the kernel's side
            writer.transport.abort()
            kernel_writer.transport.abort()
            return
        self._writers.add(kernel_writer)
        frames = FrameReader(self.max_message_bytes)
        pair = (writer, kernel_writer)
        for task in (
            asyncio.create_task(self._pump(kernel_reader, writer, pair, frames)),
            asyncio.create_task(self._pump(reader, kernel_writer, pair, None)),
        ):
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _connect_kernel(
        self, target: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to the kernel's socket, waiting for it while the kernel starts: a kernel
        started cold binds its sockets after its client connects here, and a connection
        closed meanwhile would look to the client like one libzmq dropped (output lost)."""
        delay, waited = 0.005, 0.0
        while True:
            try:
                return await _connect_unix(target)
            except (FileNotFoundError, ConnectionRefusedError):
                if waited >= KERNEL_BIND_WAIT_S or self._closed:
                    raise
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.05)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        frames: FrameReader | None,
    ) -> None:
        """Copy ``source`` to ``sink`` (checking the framing of what the kernel sends); at
        either end's close or a broken bound, close both connections."""
        try:
            while data := await source.read(CHUNK_BYTES):
                if frames is not None:
                    frames.feed(data)
                sink.write(data)
                await sink.drain()
        except FrameError as exc:
            self.cut += 1
            log.warning("a kernel broke the message bounds (%s): its connection is closed", exc)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            await self._close(pair)

    async def _close(self, writers: tuple[asyncio.StreamWriter, ...]) -> None:
        """Close connections, and wait until they are. They stay known to aclose() meanwhile:
        a close waits for pending writes to drain, to a peer that may never read them, and
        aclose() aborts what is still open. Waiting also takes a broken connection's error
        out of its stream's future: left there, the garbage collector, which finalises the
        stream's objects in any order, may report it as never retrieved (seen in CI)."""
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._writers.discard(writer)

    async def aclose(self) -> None:
        """Stop listening and close every connection. Safe to call twice."""
        self._closed = True
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        # Connections accepted just before are handed to _accept through a chain of callbacks
        # already queued (the accept, the transport, connection_made, the _accept task), one
        # loop turn each: let them run (they close themselves), else their sockets go to the
        # garbage collector. Under load two turns were seen not to be enough.
        for _ in range(8):
            await asyncio.sleep(0)
        # abort(), not close(): a close waits for pending writes to drain (to a peer that may
        # never read them again), and the loop may end first, leaving the socket open.
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        pumps = list(self._pumps)
        for task in pumps:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pumps, return_exceptions=True)
        # A transport closes its socket a loop turn after an abort(): the last aborts (of a
        # relay that was connecting as the guard closed) close before this returns.
        await asyncio.sleep(0)
        for server in servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
