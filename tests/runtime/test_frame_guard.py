"""The frame guard: its reading of ZMTP framing, on canned bytes (the flood itself, on a real
server, is in tests/server/test_attacks.py), and where it connects on to."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import select
import socket

import pytest

from kernelenv.runtime.frame_guard import MAX_MESSAGE_PARTS, FrameError, FrameReader

GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\0") + bytes(32)


def frame(body: bytes, more: bool = False, command: bool = False) -> bytes:
    flags = (1 if more else 0) | (4 if command else 0)
    if len(body) > 255:
        return bytes([flags | 2]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def feed_bytewise(reader: FrameReader, data: bytes) -> None:
    for i in range(len(data)):
        reader.feed(data[i : i + 1])


def test_ordinary_messages_pass_however_they_are_cut() -> None:
    stream = GREETING + frame(b"READY", command=True)
    for _ in range(100):  # many messages, each under the bounds
        stream += frame(b"<IDS|MSG>", more=True) + frame(b"x" * 1000, more=True) + frame(b"{}")
    FrameReader(4096).feed(stream)
    feed_bytewise(FrameReader(4096), stream)


def test_too_many_parts_or_bytes_in_one_message_are_refused() -> None:
    parts = GREETING + frame(b"x", more=True) * (MAX_MESSAGE_PARTS + 1)
    with pytest.raises(FrameError, match="parts"):
        FrameReader(1 << 20).feed(parts)
    big = GREETING + frame(b"x" * 60_000, more=True) * 40  # each part small, the whole not
    with pytest.raises(FrameError, match="bytes"):
        FrameReader(1 << 20).feed(big)
    # Refused from the frame headers, before the bodies arrive.
    header_only = GREETING + bytes([3]) + (100 << 20).to_bytes(8, "big")
    with pytest.raises(FrameError, match="bytes"):
        FrameReader(1 << 20).feed(header_only)


def test_a_stream_that_is_not_zmtp3_is_refused() -> None:
    with pytest.raises(FrameError):
        FrameReader(1 << 20).feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(FrameError, match="version"):
        FrameReader(1 << 20).feed(b"\xff" + bytes(8) + b"\x7f\x01")
    with pytest.raises(FrameError, match="command"):
        FrameReader(1 << 20).feed(GREETING + frame(b"x" * 70_000, command=True))


@pytest.mark.anyio
async def test_the_guard_never_follows_a_link_put_in_place_of_a_kernel_socket(tmp_path) -> None:
    """A kernel's socket files are in its sandbox: agent code can swap one for a link to any
    socket of the host, which the guard, connecting on, must not reach."""
    import asyncio

    from kernelenv.runtime.frame_guard import FrameGuard

    reached: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reached.append(await reader.read(64))
        writer.close()

    (tmp_path / "run").mkdir()
    kernel_ip = str(tmp_path / "run" / "kernel")
    ports = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4}
    host_service = await asyncio.start_unix_server(record, path=str(tmp_path / "host-2"))
    real_kernel = await asyncio.start_unix_server(record, path=f"{kernel_ip}-1")
    (tmp_path / "run" / "kernel-2").symlink_to(tmp_path / "host-2")  # the swapped socket
    guard = FrameGuard(max_message_bytes=1 << 20)
    prefix = await guard.start(kernel_ip, ports, parent=tmp_path / "guards")
    # The swapped socket folder: a link to a folder holding a host socket of the right name.
    (tmp_path / "swapped").symlink_to(tmp_path)
    swapped = FrameGuard(max_message_bytes=1 << 20)
    swapped_prefix = await swapped.start(
        str(tmp_path / "swapped" / "host"), ports, parent=tmp_path / "guards"
    )
    try:
        for port, guard_prefix in ((1, prefix), (2, prefix), (2, swapped_prefix)):
            reader, writer = await asyncio.open_unix_connection(f"{guard_prefix}-{port}")
            writer.write(GREETING)
            await writer.drain()
            # Through to the real kernel socket (which closes after reading), closed at once
            # for the link: either way the connection ends.
            try:
                assert await asyncio.wait_for(reader.read(), 10) == b""
            except ConnectionResetError:
                pass
            writer.close()
        for _ in range(100):
            if reached:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert reached == [GREETING[:64]]  # the real kernel's only, never the host service
    finally:
        await guard.aclose()
        await swapped.aclose()
        for server in (host_service, real_kernel):
            server.close()
            await server.wait_closed()


async def _guarded_pair(tmp_path, on_kernel_connection):
    """A guard in front of a stand-in kernel socket (``on_kernel_connection`` serves it), and a
    connection through the guard to its shell port."""
    from kernelenv.runtime.frame_guard import FrameGuard

    kernel_ip = str(tmp_path / "kernel")
    kernel = await asyncio.start_unix_server(on_kernel_connection, path=f"{kernel_ip}-1")
    guard = FrameGuard(max_message_bytes=1 << 20)
    ports = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4}
    prefix = await guard.start(kernel_ip, ports, parent=tmp_path / "guards")
    reader, writer = await asyncio.open_unix_connection(f"{prefix}-1")
    return kernel, guard, reader, writer


@pytest.mark.anyio
async def test_closing_the_guard_closes_a_connection_whose_peer_stopped_reading(tmp_path) -> None:
    """A kernel that ends its side and reads no more leaves the guard's writes to it pending:
    closing the guard must still close that connection, not leave it open to the end of the
    process (where the garbage collector found such sockets in CI)."""
    kernel_sockets: list[socket.socket] = []
    ended, release = asyncio.Event(), asyncio.Event()

    async def stop_reading_and_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        kernel_sockets.append(writer.get_extra_info("socket"))
        await asyncio.sleep(0.5)  # the host's writes fill its receive buffer meanwhile
        writer.write_eof()  # ends its side; never reads
        ended.set()
        await release.wait()
        writer.transport.abort()

    kernel, guard, reader, writer = await _guarded_pair(tmp_path, stop_reading_and_end)
    try:
        writer.write(b"x" * (8 << 20))  # far more than the socket buffers hold
        await asyncio.wait_for(ended.wait(), 10)
        with contextlib.suppress(OSError):  # the guard saw the end, and ended this side too
            await asyncio.wait_for(reader.read(), 10)
        await guard.aclose()
        (kernel_side,) = kernel_sockets
        poller = select.poll()
        poller.register(kernel_side.fileno(), select.POLLHUP | select.POLLRDHUP)
        assert poller.poll(5000), "the guard's connection to the kernel is still open"
    finally:
        writer.transport.abort()
        await guard.aclose()
        release.set()
        kernel.close()
        await asyncio.sleep(0.05)


@pytest.mark.anyio
async def test_a_broken_connection_leaves_no_error_unretrieved(tmp_path) -> None:
    """A host socket closed while the kernel still sends breaks the guard's writes to it. That
    error is kept in a future of the guard's stream, in a reference cycle with it: not taken
    out, the garbage collector may report "Future exception was never retrieved" (as it did in
    CI, failing a run)."""
    gc.collect()  # what earlier tests left

    async def send_until_cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(GREETING)
        try:
            while True:
                writer.write(frame(b"x" * 60_000))
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    kernel, guard, reader, writer = await _guarded_pair(tmp_path, send_until_cut)
    try:
        await reader.readexactly(100_000)
        writer.transport.abort()  # unread data left: the guard's next write to it fails
        await asyncio.sleep(0.5)
        await guard.aclose()
        await asyncio.sleep(0.1)
        # Looked for before a collection, which would report them (or not: it finalises in an
        # arbitrary order) and drop them.
        unretrieved = [
            repr(obj)
            for obj in gc.get_objects()
            if isinstance(obj, asyncio.Future) and getattr(obj, "_log_traceback", False)
        ]
        assert unretrieved == []
    finally:
        writer.transport.abort()
        await guard.aclose()
        kernel.close()
        await asyncio.sleep(0.05)


@pytest.mark.anyio
async def test_a_start_cancelled_at_any_point_leaves_no_socket_listening(tmp_path) -> None:
    """A pool that closes cancels the kernels it is starting, each at whatever wait it is:
    no guard socket may stay open in the event loop (asyncio's server start, cancelled after
    it began serving, returned no server to close: its socket stayed until the loop closed)."""
    from kernelenv.runtime.frame_guard import FrameGuard

    ports = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4}

    def open_fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    before = open_fds()
    for turns in range(12):  # a cancel after 0, 1, ... loop turns: each wait of start()
        guard = FrameGuard(max_message_bytes=1 << 20)
        start = asyncio.create_task(
            guard.start(str(tmp_path / "kernel"), ports, parent=tmp_path / "guards")
        )
        for _ in range(turns):
            await asyncio.sleep(0)
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await start
        await guard.aclose()
    await asyncio.sleep(0)
    assert open_fds() - before == set()


@pytest.mark.anyio
async def test_a_connection_made_before_the_kernel_binds_waits_for_it(tmp_path) -> None:
    """A kernel started cold binds its sockets after its client connects to the guard. That
    connection must wait for the kernel, not be closed: the client would take the close for
    a connection libzmq dropped, and its first step waited 5 s for IOPub to come back."""
    from kernelenv.runtime.frame_guard import FrameGuard

    kernel_ip = str(tmp_path / "kernel")
    guard = FrameGuard(max_message_bytes=1 << 20)
    ports = {"shell_port": 1, "iopub_port": 2, "control_port": 4}
    prefix = await guard.start(kernel_ip, ports, parent=tmp_path / "guards")
    greeting = b"\xff" + bytes(8) + b"\x7f\x03" + bytes(53)  # a ZMTP 3 greeting

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        await reader.read()
        writer.close()

    kernel = None
    reader, writer = await asyncio.open_unix_connection(f"{prefix}-1")
    try:
        await asyncio.sleep(0.3)  # the kernel is still starting
        kernel = await asyncio.start_unix_server(greet, path=f"{kernel_ip}-1")
        received = await asyncio.wait_for(reader.readexactly(len(greeting)), 10)
        assert received == greeting
    finally:
        writer.transport.abort()
        await guard.aclose()
        if kernel is not None:
            kernel.close()
        await asyncio.sleep(0.05)
