"""Where IOPub messages become notebook outputs and then an observation (pure logic, no I/O)."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..models import CodeObservation, ErrorInfo, StepStatus
from .sizes import held_bytes

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")

DEFAULT_MAX_OUTPUT_BYTES = 1_000_000
MAX_DISPLAY_ID_CHARS = 256  # ids are remembered over the episode; real ones are uuids

# Observation metadata keys: the widget models a step created or changed, and the flag set
# when some of that, or an update of an earlier step's display, was dropped by the byte cap.
WIDGET_STATE_KEY = "widget_state"
NOTEBOOK_STATE_TRUNCATED_KEY = "notebook_state_truncated"


def strip_ansi(text: str) -> str:
    """Remove ANSI colour and cursor codes from ``text``."""
    return ANSI_ESCAPE.sub("", text)


def truncation_marker(limit: int) -> str:
    """The visible marker put where output was cut."""
    return f"\n[kernelenv: output truncated, more than {limit} bytes]\n"


@dataclass
class StepDisplays:
    """What one step did with display ids: the input of an episode-wide display index.

    Attributes:
        locations: Display id -> indices of this step's outputs shown under it, as the step
            ended (a ``clear_output`` forgets the outputs it cleared, as nbclient does).
        last: Display id -> the last bundle (``{"data", "metadata"}``) the step sent for it,
            by ``display_data``, ``execute_result`` or ``update_display_data``; it is what
            outputs of that id in earlier steps show from now on.
        dropped: Display ids whose last bundle was over the byte cap (not in ``last``).
    """

    locations: dict[str, list[int]] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)


def display_id_of(content: dict[str, Any]) -> str | None:
    """The ``transient.display_id`` of a message's content, if it has a usable one."""
    transient = content.get("transient")  # may be present and None
    display_id = transient.get("display_id") if isinstance(transient, dict) else None
    if not isinstance(display_id, str) or not 0 < len(display_id) <= MAX_DISPLAY_ID_CHARS:
        return None  # none, or not one a frontend would make (they are uuids): not tracked
    return display_id


class OutputCollector:
    """Builds the outputs of one cell from its IOPub messages, as Jupyter would store them.

    Applies notebook semantics: consecutive stream text of the same name is merged,
    ``clear_output`` (with ``wait``) clears, an ``update_display_data`` (or a new display
    with an id already shown) rewrites every output with the same ``display_id``. Output
    beyond ``max_output_bytes`` is dropped with a marker; the ``execute_result`` and ``error``
    are always kept (each cut to the cap on its own).

    What reaches beyond the cell is kept apart, under its own cap of ``max_output_bytes``:
    the display ids it sent (:attr:`displays`, for updates of earlier steps) and the state of
    the widget models its comm messages carried (nbclient's ``store_widget_state``), which
    :meth:`to_observation` reports as ``metadata["widget_state"]``.
    """

    def __init__(self, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self.max_output_bytes = max_output_bytes
        self.outputs: list[dict[str, Any]] = []
        self.truncated = False  # something was dropped at some point (reported)
        self._full = False  # the cap is reached now: drop until the next clear_output
        self.execution_count: int | None = None
        self._bytes = 0
        self._essentials: set[str] = set()  # kept past the cap already: execute_result, error
        self._clear_on_next_output = False
        self.displays = StepDisplays()
        self.widget_state: dict[str, dict[str, Any]] = {}
        self.widget_state_truncated = False
        # Characters held for displays and widget models, per key and in all.
        self._side_sizes: dict[tuple[str, str], int] = {}
        self._side_bytes = 0

    def feed(self, msg: dict[str, Any]) -> None:
        """Apply one IOPub message (already filtered by parent ``msg_id``)."""
        msg_type = msg["msg_type"]
        content = msg["content"]
        display_id = size = None
        if msg_type in ("display_data", "execute_result", "update_display_data"):
            display_id = display_id_of(content)
            if display_id:
                size = _bundle_size(content)
                self._note_display(display_id, content, size)
                self._update_display(display_id, content)
        if msg_type == "execute_input":
            self.execution_count = content.get("execution_count")
        elif msg_type == "clear_output":
            if content.get("wait"):
                self._clear_on_next_output = True
            else:
                self._clear()
        elif msg_type in ("comm_open", "comm_msg"):
            self._note_widget_state(content, msg.get("buffers") or [])
        elif msg_type in ("stream", "display_data", "execute_result", "error"):
            if self._clear_on_next_output:
                self._clear()
            if msg_type == "stream":
                self._add_stream(content["name"], content.get("text", ""))
            else:
                self._add_rich(msg_type, msg, display_id, size)

    # -- the pieces -------------------------------------------------------------------

    def _clear(self) -> None:
        self.outputs.clear()
        self.displays.locations.clear()
        self._bytes = 0
        self._full = False
        self._clear_on_next_output = False

    def _room(self) -> int:
        return self.max_output_bytes - self._bytes

    def _add_stream(self, name: str, text: str) -> None:
        if self._full:
            return
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self._room():
            text = _cut_utf8(text, max(self._room(), 0)) + truncation_marker(self.max_output_bytes)
            self.truncated = self._full = True
        self._bytes += size
        last = self.outputs[-1] if self.outputs else None
        if last is not None and last["output_type"] == "stream" and last["name"] == name:
            last["text"] += text
        else:
            self.outputs.append({"output_type": "stream", "name": name, "text": text})

    def _add_rich(
        self,
        msg_type: str,
        msg: dict[str, Any],
        display_id: str | None = None,
        size: int | None = None,
    ) -> None:
        if size is None:
            size = _bundle_size(msg["content"])
        # A cell has one result and at most one error; more (sent by hand) get no privilege.
        essential = msg_type in ("execute_result", "error") and msg_type not in self._essentials
        if essential:
            self._essentials.add(msg_type)
        if self._full and not essential:
            return
        output = output_from_msg(msg)
        if essential:
            # Results are kept whatever came before; only one larger than the cap is cut.
            if size > self.max_output_bytes and _cut_output(output, self.max_output_bytes):
                self.truncated = True
        elif size > self._room():
            self._mark_truncated()
            return
        self._bytes += size
        if msg_type == "execute_result":
            self.execution_count = msg["content"].get("execution_count", self.execution_count)
        if display_id:
            self.displays.locations.setdefault(display_id, []).append(len(self.outputs))
        self.outputs.append(output)

    def mark_truncated(self) -> None:
        """Say that output was dropped before it reached the collector (a visible marker)."""
        self._mark_truncated()

    def _mark_truncated(self) -> None:
        if not self._full:
            self.truncated = self._full = True
            self.outputs.append(
                {
                    "output_type": "stream",
                    "name": "stdout",
                    "text": truncation_marker(self.max_output_bytes),
                }
            )

    def _update_display(self, display_id: str, content: dict[str, Any]) -> None:
        indexes = self.displays.locations.get(display_id, [])
        # An update rewrites every output of its id: it counts against the cap like new output.
        growth = sum(_bundle_size(content) - _bundle_size(self.outputs[i]) for i in indexes)
        if growth > self._room():
            self._mark_truncated()
            return
        self._bytes += growth
        for index in indexes:
            self.outputs[index]["data"] = dict(content.get("data") or {})
            self.outputs[index]["metadata"] = dict(content.get("metadata") or {})

    # -- what reaches beyond the cell (own cap) -------------------------------------------

    def _side_room(self, key: tuple[str, str], size: int) -> bool:
        """Account ``size`` for ``key`` (in place of its previous size) if it fits the cap."""
        used = self._side_bytes - self._side_sizes.get(key, 0)
        if used + size > self.max_output_bytes:
            return False
        self._side_sizes[key] = size
        self._side_bytes = used + size
        return True

    def _note_display(self, display_id: str, content: dict[str, Any], size: int) -> None:
        key = ("display", display_id)
        if self._side_room(key, size):
            # The message's own dicts: nothing changes them (outputs get copies).
            self.displays.last[display_id] = {
                "data": content.get("data") or {},
                "metadata": content.get("metadata") or {},
            }
            self.displays.dropped.discard(display_id)
        else:  # an older bundle would be wrong now: forget it, and say so
            self._side_bytes -= self._side_sizes.pop(key, 0)
            self.displays.last.pop(display_id, None)
            self.displays.dropped.add(display_id)

    def _note_widget_state(self, content: dict[str, Any], buffers: list[Any]) -> None:
        """nbclient's ``handle_comm_msg``: merge ``data.state`` per comm (custom messages,
        which have no state, are ignored); buffers go to the paths ``buffer_paths`` names."""
        comm_id, data = content.get("comm_id"), content.get("data")
        if not isinstance(comm_id, str) or not isinstance(data, dict):
            return
        state = data.get("state")
        if not isinstance(state, dict):
            return
        model = self.widget_state.get(comm_id) or {"state": {}, "buffers": {}}
        merged = {**model["state"], **state}
        new_buffers = dict(model["buffers"])
        paths = data.get("buffer_paths")
        for path, buffer in zip(paths if isinstance(paths, list) else [], buffers):
            if isinstance(path, list):
                new_buffers[json.dumps(path, default=str)] = {
                    "data": base64.b64encode(bytes(buffer)).decode("ascii"),
                    "encoding": "base64",
                    "path": path,
                }
        size = len(json.dumps(merged, default=str)) + sum(
            len(b["data"]) for b in new_buffers.values()
        )
        if self._side_room(("widget", comm_id), size):
            self.widget_state[comm_id] = {"state": merged, "buffers": new_buffers}
        else:
            self.widget_state_truncated = True

    # -- results ----------------------------------------------------------------------

    def to_observation(
        self,
        status: StepStatus,
        *,
        reply: dict[str, Any] | None = None,
        error: ErrorInfo | None = None,
        duration_s: float = 0.0,
        kernel_restarted: bool = False,
    ) -> CodeObservation:
        """Fold the collected outputs into a :class:`CodeObservation`.

        ``error`` overrides the error found in the outputs (used for timeouts and dead
        kernels, whose cause the kernel cannot report).
        """
        stdout: list[str] = []
        stderr: list[str] = []
        return_value = None
        found_error = None
        for output in self.outputs:
            kind = output["output_type"]
            if kind == "stream":
                (stdout if output["name"] == "stdout" else stderr).append(output["text"])
            elif kind == "execute_result":
                return_value = output.get("data", {}).get("text/plain")
            elif kind == "error":
                found_error = error_from_content(output)
        if found_error is None and reply is not None and reply.get("status") == "error":
            found_error = error_from_content(reply)
        error = error or found_error
        if error is not None:
            stderr.append(error.text + "\n")
        execution_count = self.execution_count
        if reply is not None and reply.get("execution_count") is not None:
            execution_count = reply["execution_count"]
        metadata: dict[str, Any] = {}
        if self.widget_state:
            metadata[WIDGET_STATE_KEY] = {
                comm_id: {"state": model["state"], "buffers": list(model["buffers"].values())}
                if model["buffers"]
                else {"state": model["state"]}
                for comm_id, model in self.widget_state.items()
            }
        if self.widget_state_truncated:
            metadata[NOTEBOOK_STATE_TRUNCATED_KEY] = True
        return CodeObservation(
            stdout="".join(stdout),
            stderr="".join(stderr),
            exit_code=status.exit_code,
            status=status,
            return_value=return_value,
            outputs=self.outputs,
            error=error,
            execution_count=execution_count,
            duration_s=duration_s,
            kernel_restarted=kernel_restarted,
            output_truncated=self.truncated,
            metadata=metadata,
        )


def error_from_content(content: dict[str, Any]) -> ErrorInfo:
    """An :class:`ErrorInfo` from an ``error`` output or an error ``execute_reply``."""
    return ErrorInfo(
        ename=content.get("ename", "Error"),
        evalue=content.get("evalue", ""),
        traceback=[strip_ansi(line) for line in content.get("traceback", [])],
    )


def status_from_reply(reply: dict[str, Any]) -> StepStatus:
    """Map an ``execute_reply`` content to a step status."""
    return {
        "ok": StepStatus.OK,
        "error": StepStatus.ERROR,
        "aborted": StepStatus.ABORTED,
    }.get(reply.get("status", "error"), StepStatus.ERROR)


def output_from_msg(msg: dict[str, Any]) -> dict[str, Any]:
    """The nbformat v4 output of an IOPub output message, as plain dicts.

    Builds what ``nbformat.v4.output_from_msg`` builds, minus its JSON-schema validation of
    every output: that costs about 1.7 ms an output (more than all of kernelenv's own work in
    a step), and it raised on odd but harmless bundles. Exported notebooks are still validated.

    Raises:
        ValueError: ``msg`` is not an output message.
    """
    msg_type = msg["msg_type"]
    content = msg["content"]
    if msg_type in ("execute_result", "display_data"):
        output = {
            "output_type": msg_type,
            "metadata": dict(content.get("metadata") or {}),
            "data": dict(content.get("data") or {}),
        }
        if msg_type == "execute_result":
            output["execution_count"] = content.get("execution_count")
        return output
    if msg_type == "error":
        return {
            "output_type": "error",
            "ename": content.get("ename", "NotImplementedError"),
            "evalue": content.get("evalue", ""),
            "traceback": list(content.get("traceback") or []),
        }
    if msg_type == "stream":
        return {"output_type": "stream", "name": content.get("name", "stdout"),
                "text": content.get("text", "")}
    raise ValueError(f"not an output message: {msg_type!r}")


def _bundle_size(content: dict[str, Any]) -> int:
    """What a message's content (or an output) holds: data, metadata, display id, traceback."""
    return held_bytes(content)


def _cut_utf8(text: str, limit: int) -> str:
    return text.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


def _cut_output(output: dict[str, Any], limit: int) -> bool:
    """Cut a result or error to about ``limit`` in place: long text/plain is cut with a marker,
    other data and metadata holding more are dropped. Returns whether anything was."""
    marker = truncation_marker(limit)
    cut = False
    data = {}
    for mime, value in (output.get("data") or {}).items():
        if isinstance(value, str) and len(value) > limit:
            cut = True
            if mime == "text/plain":
                data[mime] = _cut_utf8(value, limit) + marker
        elif not isinstance(value, str) and held_bytes(value) > limit:
            cut = True
        else:
            data[mime] = value
    if held_bytes(data) > 2 * limit:  # many parts, each under the limit: keep the text
        data = {mime: value for mime, value in data.items() if mime == "text/plain"}
        cut = True
    if "data" in output:
        output["data"] = data
    if held_bytes(output.get("metadata")) > limit:
        output["metadata"] = {}
        cut = True
    if "traceback" in output:
        kept, used = [], 0
        for line in output["traceback"]:
            used += len(line)
            if used > limit:
                kept.append(marker.strip())
                cut = True
                break
            kept.append(line)
        output["traceback"] = kept
    return cut
