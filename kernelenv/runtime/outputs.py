"""Where IOPub messages become notebook outputs and then an observation (pure logic, no I/O)."""

from __future__ import annotations

import re
from typing import Any

from ..models import CodeObservation, ErrorInfo, StepStatus

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")

DEFAULT_MAX_OUTPUT_BYTES = 1_000_000


def strip_ansi(text: str) -> str:
    """Remove ANSI colour and cursor codes from ``text``."""
    return ANSI_ESCAPE.sub("", text)


def truncation_marker(limit: int) -> str:
    """The visible marker put where output was cut."""
    return f"\n[kernelenv: output truncated, more than {limit} bytes]\n"


class OutputCollector:
    """Builds the outputs of one cell from its IOPub messages, as Jupyter would store them.

    Applies notebook semantics: consecutive stream text of the same name is merged,
    ``clear_output`` (with ``wait``) clears, ``update_display_data`` rewrites every output
    with the same ``display_id``. Output beyond ``max_output_bytes`` is dropped with a marker;
    the ``execute_result`` and ``error`` are always kept (each cut to the cap on its own).
    """

    def __init__(self, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self.max_output_bytes = max_output_bytes
        self.outputs: list[dict[str, Any]] = []
        self.truncated = False  # something was dropped at some point (reported)
        self._full = False  # the cap is reached now: drop until the next clear_output
        self.execution_count: int | None = None
        self._bytes = 0
        self._clear_on_next_output = False
        self._display_index: dict[str, list[int]] = {}

    def feed(self, msg: dict[str, Any]) -> None:
        """Apply one IOPub message (already filtered by parent ``msg_id``)."""
        msg_type = msg["msg_type"]
        content = msg["content"]
        if msg_type == "execute_input":
            self.execution_count = content.get("execution_count")
        elif msg_type == "clear_output":
            if content.get("wait"):
                self._clear_on_next_output = True
            else:
                self._clear()
        elif msg_type == "update_display_data":
            self._update_display(content)
        elif msg_type in ("stream", "display_data", "execute_result", "error"):
            if self._clear_on_next_output:
                self._clear()
            if msg_type == "stream":
                self._add_stream(content["name"], content.get("text", ""))
            else:
                self._add_rich(msg_type, msg)

    # -- the pieces -------------------------------------------------------------------

    def _clear(self) -> None:
        self.outputs.clear()
        self._display_index.clear()
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

    def _add_rich(self, msg_type: str, msg: dict[str, Any]) -> None:
        size = _bundle_size(msg["content"])
        essential = msg_type in ("execute_result", "error")
        if self._full and not essential:
            return
        output = output_from_msg(msg)
        if essential:
            # Results are kept whatever came before; only one larger than the cap is cut.
            if size > self.max_output_bytes:
                output = _cut_output(output, self.max_output_bytes)
                self.truncated = True
        elif size > self._room():
            self._mark_truncated()
            return
        self._bytes += size
        if msg_type == "execute_result":
            self.execution_count = msg["content"].get("execution_count", self.execution_count)
        display_id = (msg["content"].get("transient") or {}).get("display_id")
        if display_id:
            self._display_index.setdefault(display_id, []).append(len(self.outputs))
        self.outputs.append(output)

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

    def _update_display(self, content: dict[str, Any]) -> None:
        display_id = (content.get("transient") or {}).get("display_id")
        for index in self._display_index.get(display_id, []):
            self.outputs[index]["data"] = dict(content.get("data", {}))
            self.outputs[index]["metadata"] = dict(content.get("metadata", {}))

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
    size = 0
    for value in (content.get("data") or {}).values():
        size += len(value) if isinstance(value, str) else len(str(value))
    for line in content.get("traceback") or ():
        size += len(line)
    return size


def _cut_utf8(text: str, limit: int) -> str:
    return text.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


def _cut_output(output: dict[str, Any], limit: int) -> dict[str, Any]:
    marker = truncation_marker(limit)
    if "data" in output:
        output["data"] = {
            mime: (_cut_utf8(value, limit) + marker if isinstance(value, str) else value)
            for mime, value in output["data"].items()
            if mime == "text/plain" or not isinstance(value, str) or len(value) <= limit
        }
    if "traceback" in output:
        kept, used = [], 0
        for line in output["traceback"]:
            used += len(line)
            if used > limit:
                kept.append(marker.strip())
                break
            kept.append(line)
        output["traceback"] = kept
    return output
