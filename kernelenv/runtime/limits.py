"""What a kernel can make this process hold: libzmq's receive limits, lost messages, late output.

Every byte a kernel sends is bounded where it is received:

- libzmq drops (by disconnecting) any message part larger than ``max_message_bytes`` before
  reading it (``zmq.MAXMSGSIZE``) and queues at most ``RECEIVE_HWM`` messages a socket
  (``zmq.RCVHWM``); beyond that the kernel's own side queues, then drops. :class:`ConnectionWatch`
  sees such a disconnection, replaces the socket, and the step reports the output as lost.
- Output that arrives outside of its cell's step (threads writing after the cell ended) waits
  in a :class:`LateBacklog` of at most ``limit_bytes``; the rest is counted and dropped.

libzmq limits neither the number of parts of one message nor their total, and holds every
part before it hands out the first: those are bounded before libzmq sees them, by the
:mod:`~kernelenv.runtime.frame_guard` every kernel connection goes through (at most
``MAX_MESSAGE_PARTS`` parts and about ``max_message_bytes`` bytes a message). So this process
holds at most ``RECEIVE_HWM`` such messages a socket.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger(__name__)

# Largest message part accepted from a kernel; a larger one is dropped by libzmq unread.
DEFAULT_MAX_MESSAGE_BYTES = 2 << 20
# Messages queued per socket of this process (libzmq's default is 1000).
RECEIVE_HWM = 8
# The IOPub messages that carry output worth reporting when they arrive late.
LATE_MESSAGE_TYPES = ("stream", "display_data", "update_display_data", "error")


def limit_receiving(context: zmq.Context, max_message_bytes: int) -> None:
    """Make every socket ``context`` creates from now on bounded as the module docstring says."""
    context.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    context.setsockopt(zmq.RCVHWM, RECEIVE_HWM)


@functools.cache
def bounded_context(max_message_bytes: int) -> zmq.asyncio.Context:
    """The one ZMQ context of this process for kernel connections with this message limit.

    jupyter_client makes a context per kernel manager and per client otherwise: two I/O and
    two reaper threads and about twenty descriptors a kernel, which caps a server at a few
    hundred sessions. Its socket limit is raised from libzmq's 1023 (five sockets a kernel).
    """
    context = zmq.asyncio.Context()
    context.set(zmq.MAX_SOCKETS, context.get(zmq.SOCKET_LIMIT))
    limit_receiving(context, max_message_bytes)
    return context


def lost_marker(max_message_bytes: int) -> str:
    """The visible marker of output lost to the message size limit."""
    return (
        f"\n[kernelenv: the kernel sent a message larger than {max_message_bytes} bytes; it "
        "was dropped, and output sent around it may be lost]\n"
    )


def late_dropped_marker(dropped_bytes: int, limit: int) -> str:
    """The visible marker of late output dropped past the backlog's limit."""
    return (
        f"\n[kernelenv: late output truncated: {dropped_bytes} bytes dropped past "
        f"{limit} bytes]\n"
    )


class ConnectionWatch:
    """Sees libzmq drop the shell or IOPub connection of a client, and replaces that socket.

    libzmq disconnects a peer that sends a part over ``zmq.MAXMSGSIZE`` and does not connect
    again by itself: the socket would stay deaf. Connecting the same socket again does not
    work either, and ``disconnect()`` may discard the rest of a message whose first part the
    socket already took (libzmq then aborts the process). So the socket is replaced by a new
    one. Messages sent meanwhile are lost (a new SUB socket also needs its subscription to
    reach the kernel: ipykernel 7 says so with an ``iopub_welcome``).
    """

    CHANNELS = ("shell", "iopub")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._monitors: dict[str, tuple[zmq.Socket, zmq.Socket]] = {}
        self._lost: list[str] = []
        for name in self.CHANNELS:
            self._watch(name)

    def lost(self) -> list[str]:
        """Channels whose connection libzmq dropped since they were (re)connected."""
        for name, (_, reader) in self._monitors.items():
            while reader.get(zmq.EVENTS) & zmq.POLLIN:
                event = parse_monitor_message(reader.recv_multipart())
                if event["event"] == zmq.EVENT_DISCONNECTED and name not in self._lost:
                    self._lost.append(name)
        return list(self._lost)

    def reconnect(self, names: list[str]) -> None:
        """Replace the sockets of ``names`` by new, connected ones (no read may be pending)."""
        for name in names:
            self._lost.remove(name)
            channel = getattr(self._client, f"{name}_channel")
            old = channel.socket
            self._unwatch(name)
            if name == "iopub":
                channel.socket = self._client.connect_iopub()
            else:
                channel.socket = self._client.connect_shell(
                    identity=self._client.session.bsession
                )
            old.close(linger=0)
            self._watch(name)

    def close(self) -> None:
        """Stop watching and close the monitor sockets. Safe to call twice."""
        for name in list(self._monitors):
            self._unwatch(name)

    def _watch(self, name: str) -> None:
        socket = getattr(self._client, f"{name}_channel").socket
        monitor = socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        # A blocking twin of the monitor: read without waiting, no event loop round trip.
        self._monitors[name] = (monitor, zmq.Socket.shadow(monitor.underlying))

    def _unwatch(self, name: str) -> None:
        monitor, _ = self._monitors.pop(name)
        try:
            getattr(self._client, f"{name}_channel").socket.disable_monitor()
        except zmq.ZMQError:
            pass
        monitor.close(linger=0)


class LateBacklog:
    """Output received outside of its cell's step, kept for the next observation.

    Holds at most ``limit_bytes`` (counted as the bytes received); messages past it are
    dropped whole and counted, and the next observation carries a marker saying how much.
    """

    def __init__(self, limit_bytes: int, max_message_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.max_message_bytes = max_message_bytes
        self.items: list[dict[str, Any]] = []
        self.held_bytes = 0
        self.dropped_bytes = 0
        self.lost = False

    def fits(self, size: int) -> bool:
        """Whether a message of ``size`` bytes would still be kept."""
        return self.held_bytes + size <= self.limit_bytes

    def drop(self, msg_type: str, size: int) -> None:
        """Count a message that is dropped unread (it did not fit)."""
        if msg_type in LATE_MESSAGE_TYPES:
            self.dropped_bytes += size

    def note_lost(self) -> None:
        """Record that libzmq dropped a message (and so maybe output) between steps."""
        self.lost = True

    def add(self, msg: dict[str, Any], size: int) -> None:
        """Keep one IOPub message of ``size`` bytes if it shows output and fits."""
        if msg["msg_type"] not in LATE_MESSAGE_TYPES:
            return
        if not self.fits(size):
            self.dropped_bytes += size
            return
        self.held_bytes += size
        self.items.append(
            {
                "msg_type": msg["msg_type"],
                "parent_msg_id": msg["parent_header"].get("msg_id"),
                "content": msg["content"],
            }
        )

    def take(self) -> tuple[list[dict[str, Any]], int, bool]:
        """The kept items (with marker items for what was dropped), the bytes dropped, and
        whether libzmq dropped messages; the backlog starts empty again."""
        items, dropped, lost = self.items, self.dropped_bytes, self.lost
        if dropped:
            items.append(_marker_item(late_dropped_marker(dropped, self.limit_bytes)))
        if lost:
            items.append(_marker_item(lost_marker(self.max_message_bytes)))
        self.items, self.held_bytes, self.dropped_bytes, self.lost = [], 0, 0, False
        return items, dropped, lost


def _marker_item(text: str) -> dict[str, Any]:
    return {"msg_type": "stream", "parent_msg_id": None, "content": {"name": "stderr", "text": text}}
