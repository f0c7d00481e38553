"""Comparison of notebook outputs between two runs, tolerant of what legitimately varies (pure).

At least as tolerant as nbclient's own test normalisation (``tests/test_client.py``:
``normalize_output``), and every tolerance has a ``strict_*`` switch that turns it off. In
the order applied:

* output ``metadata`` is dropped, and the ``execution_count`` of an ``execute_result``
  (nbclient drops metadata; cell execution counts are compared apart, when asked);
* multi-line lists are joined (``["a\\n", "b"]`` is ``"a\\nb"``, nbformat's on-disk form);
* text (stream text, string MIME data, ``evalue``, tracebacks): ANSI codes are stripped, and
  memory addresses, the kernel's temporary directory, ``In[7]``/``Out[7]``, ``%time`` and
  ``%timeit`` timings, UUIDs and ipykernel's temporary cell files become placeholders
  (``strict_text`` keeps them);
* tracebacks: the cell header of every IPython version becomes ``<CELL>``
  (``<ipython-input-1-9abc744909d9> in <module>``, ``Input In [1], in <cell line: 2>()``,
  ``Cell In[1], line 2``), lines are re-split and blank ones dropped (``strict_tracebacks``);
* ``image/svg+xml``: compared as XML, in its C14N 2.0 form (attribute order, ``<a/>`` against
  ``<a></a>``, whitespace between elements), as nbclient compares ``xmltodict.parse`` trees
  (``strict_svg``);
* binary images, PDF, audio and video: by MIME type only (encoders differ between machines);
  ``strict_images`` compares the decoded bytes, so base64 line wrapping still does not count;
* ``application/vnd.jupyter.widget-view+json``: the random ``model_id`` becomes
  ``<MODEL_ID>`` (``strict_widget_ids``);
* other JSON MIME values are compared as parsed values (key order does not count);
* streams are coalesced per name with ``\\r`` and backspaces applied, and a stderr chunk just
  before a stdout chunk is moved after it: nbclient's opt-in ``coalesce_streams``, which absorbs
  flush races between the two streams (``strict_streams``).

Example:
    >>> outputs_equal(recorded, replayed)                              # tolerant
    >>> outputs_equal(recorded, replayed, CompareOptions.strict())     # nothing normalised
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

from ..runtime.outputs import strip_ansi

# (pattern, replacement) applied in order to every text compared, unless strict_text.
NORMALISERS: list[tuple[re.Pattern[str], str]] = [
    # A kernel's directory: a pool's kernel or a live fork (nested under its parent's), with
    # or without the byte-budget mount (``fs``) that holds its working directory.
    (
        re.compile(
            r"[^\s'\"]*?/kernelenv-[^/\s'\"]+/(?:k\d+-[0-9a-f]{8}|f[0-9a-f]{8})"
            r"(?:/(?:fs|run)/f/f[0-9a-f]{8})*(?:/fs)?"
        ),
        "<kernel-dir>",
    ),
    (re.compile(r"\b0x[0-9a-fA-F]{4,}\b"), "0x<address>"),
    (re.compile(r"\b(In|Out)\s?\[\d*\]"), r"\1[N]"),
    (re.compile(r"(?m)^(CPU times|Wall time):.*$"), r"\1: <time>"),
    (re.compile(r"(?m)^.* per loop \(mean .*\)$"), "<timeit>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
    # ipykernel's per-cell files, when IPYKERNEL_CELL_NAME is not set.
    (re.compile(r"(?:/tmp|/var/folders/\S+)/ipykernel_\d+/\d+\.py"), "<CELL>"),
]

# Traceback cell headers of every IPython version: nbclient's ipython_input_pat and
# ipython8_input_pat, widened to line numbers of any length and to kernelenv's "<cell>".
_CELL_NAME = r"(?:<ipython-input-\d+-[0-9a-f]+>|<IPY-INPUT>|<cell>|<CELL>)"
TRACEBACK_HEADERS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(_CELL_NAME + r" in (?:<module>|<cell line: \d+>\(\))"), "<CELL>"),
    (
        re.compile(
            r"(?:(?:Cell|Input) In\s?\[(?:\d*|N)\]|" + _CELL_NAME + r"), (?:in )?"
            r"(?:line \d+|<module>|<cell line: \d+>\(\))"
        ),
        "<CELL>",
    ),
    (re.compile(r"File " + _CELL_NAME + r":\d+"), "<CELL>"),
]

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
SVG_MIME = "image/svg+xml"
_BINARY_MIME_PREFIXES = ("image/", "application/pdf", "video/", "audio/")


@dataclass(frozen=True)
class CompareOptions:
    """Which tolerances a comparison drops (all False: the tolerant default).

    Attributes:
        strict_images: Compare the decoded bytes of binary images, not only their MIME type.
        strict_svg: Compare SVG as text, not as XML.
        strict_tracebacks: Keep traceback cell headers and blank lines as they are.
        strict_streams: Compare stream outputs one by one, without coalescing or reordering.
        strict_widget_ids: Keep widget model ids.
        strict_text: Keep addresses, directories, execution counts, timings and UUIDs in text.
        compare_metadata: Compare output metadata too.
        compare_execution_count: Compare the execution counts of cells and their results.
    """

    strict_images: bool = False
    strict_svg: bool = False
    strict_tracebacks: bool = False
    strict_streams: bool = False
    strict_widget_ids: bool = False
    strict_text: bool = False
    compare_metadata: bool = False
    compare_execution_count: bool = False

    @classmethod
    def strict(cls) -> CompareOptions:
        """Every option on: only ANSI codes and multi-line lists are still normalised."""
        return cls(**{f.name: True for f in dataclasses.fields(cls)})


DEFAULT_OPTIONS = CompareOptions()


def normalise_text(text: str, options: CompareOptions = DEFAULT_OPTIONS) -> str:
    """``text`` without ANSI codes, and what varies between runs replaced by placeholders."""
    text = strip_ansi(text)
    if options.strict_text:
        return text
    for pattern, replacement in NORMALISERS:
        text = pattern.sub(replacement, text)
    return text


def normalise_traceback(
    lines: Iterable[str], options: CompareOptions = DEFAULT_OPTIONS
) -> list[str]:
    """A traceback's lines, normalised; cell headers of any IPython version become ``<CELL>``."""
    text = normalise_text("\n".join(lines), options)
    if options.strict_tracebacks:
        return text.splitlines()
    for pattern, replacement in TRACEBACK_HEADERS:
        text = pattern.sub(replacement, text)
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def canonical_svg(svg: str) -> str:
    """The C14N 2.0 form of an SVG document (``svg`` itself when it is not well-formed XML)."""
    try:
        return ElementTree.canonicalize(svg.strip(), strip_text=True)
    except ElementTree.ParseError:
        return svg


def normalise_output(
    output: dict[str, Any], options: CompareOptions = DEFAULT_OPTIONS
) -> dict[str, Any]:
    """One nbformat v4 output as a comparable dict (``output`` itself is not modified)."""
    kind = output.get("output_type")
    result: dict[str, Any] = {"output_type": kind}
    if kind == "stream":
        result["name"] = output.get("name", "stdout")
        result["text"] = normalise_text(_joined(output.get("text", "")), options)
    elif kind in ("display_data", "execute_result"):
        result["data"] = {
            mime: _mime_value(mime, value, options)
            for mime, value in (output.get("data") or {}).items()
        }
        if options.compare_metadata:
            result["metadata"] = output.get("metadata") or {}
        if kind == "execute_result" and options.compare_execution_count:
            result["execution_count"] = output.get("execution_count")
    elif kind == "error":
        result["ename"] = output.get("ename")
        result["evalue"] = normalise_text(_joined(output.get("evalue", "")), options)
        result["traceback"] = normalise_traceback(output.get("traceback") or [], options)
    else:
        result.update({k: v for k, v in output.items() if k != "output_type"})
    return result


def normalise_outputs(
    outputs: Iterable[dict[str, Any]], options: CompareOptions = DEFAULT_OPTIONS
) -> list[dict[str, Any]]:
    """A cell's outputs as comparable dicts (streams coalesced unless ``strict_streams``)."""
    normalised = [normalise_output(output, options) for output in outputs]
    return normalised if options.strict_streams else coalesce_streams(normalised)


def outputs_equal(
    expected: Iterable[dict[str, Any]],
    actual: Iterable[dict[str, Any]],
    options: CompareOptions = DEFAULT_OPTIONS,
) -> bool:
    """Whether two cells' outputs are the same once normalised."""
    return normalise_outputs(expected, options) == normalise_outputs(actual, options)


def output_lines(normalised: list[dict[str, Any]]) -> list[str]:
    """Normalised outputs as readable lines for a diff: a ``[kind]`` line, then the text."""
    lines: list[str] = []
    for output in normalised:
        kind = output.get("output_type")
        if kind == "stream":
            lines += [f"[{output.get('name')}]", *str(output.get("text", "")).splitlines()]
        elif kind == "error":
            lines.append(f"[error] {output.get('ename')}: {output.get('evalue')}")
            lines += output.get("traceback", [])
        elif kind in ("display_data", "execute_result"):
            count = output.get("execution_count")
            lines.append(f"[{kind}]" + (f" {count}" if count is not None else ""))
            for mime, value in sorted(output.get("data", {}).items()):
                lines += [f"{mime}:", *_value_lines(value)]
            if "metadata" in output:
                lines += ["metadata:", *_value_lines(output["metadata"])]
        else:
            lines += [f"[{kind}]", *_value_lines(output)]
    return lines


def _value_lines(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.splitlines()
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False, default=str).splitlines()


def outputs_diff(
    expected: Iterable[dict[str, Any]],
    actual: Iterable[dict[str, Any]],
    options: CompareOptions = DEFAULT_OPTIONS,
) -> str:
    """A unified diff of two cells' normalised outputs (empty when they are equal)."""
    return "\n".join(
        difflib.unified_diff(
            output_lines(normalise_outputs(expected, options)),
            output_lines(normalise_outputs(actual, options)),
            "recorded",
            "replayed",
            lineterm="",
            n=2,
        )
    )


# nbclient's regex for carriage returns; its backspace regex (r"[^\n]\b") is a word boundary,
# not a backspace, and its loop never runs, so the rule nbclient meant is written out here.
_CARRIAGE_RETURN = re.compile(r".*\r(?=[^\n])")
_BACKSPACE = re.compile("[^\n]\x08")


def coalesce_streams(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """nbclient's ``coalesce_streams`` on normalised outputs (a new list; inputs unchanged).

    All text of a stream name is merged into its first output, carriage returns and
    backspaces are applied, and a stderr output directly before a stdout one moves after it.
    """
    merged: list[dict[str, Any]] = []
    streams: dict[str, dict[str, Any]] = {}
    for output in outputs:
        if output["output_type"] != "stream":
            merged.append(output)
        elif output["name"] in streams:
            streams[output["name"]]["text"] += output["text"]
        else:
            streams[output["name"]] = dict(output)
            merged.append(streams[output["name"]])
    for output in streams.values():
        text = output["text"]
        while True:
            shorter = _BACKSPACE.sub("", text)
            if len(shorter) == len(text):
                break
            text = shorter
        output["text"] = _CARRIAGE_RETURN.sub("", text)
    for index, output in enumerate(merged):
        if output["output_type"] == "stream" and output["name"] == "stderr":
            following = merged[index + 1] if index + 1 < len(merged) else None
            if following and following["output_type"] == "stream" and following["name"] == "stdout":
                merged.insert(index, merged.pop(index + 1))
    return merged


def _joined(value: Any) -> Any:
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return "".join(value)
    return value


def _mime_value(mime: str, value: Any, options: CompareOptions) -> Any:
    value = _joined(value)
    if mime == WIDGET_VIEW_MIME and isinstance(value, dict):
        if not options.strict_widget_ids and "model_id" in value:
            value = {**value, "model_id": "<MODEL_ID>"}
        return value
    if mime == SVG_MIME and isinstance(value, str):
        return normalise_text(value if options.strict_svg else canonical_svg(value), options)
    if mime.startswith(_BINARY_MIME_PREFIXES) and isinstance(value, str):
        if not options.strict_images:
            return "<binary>"
        try:
            raw = base64.b64decode(value)  # line-wrapped base64 decodes to the same bytes
        except (binascii.Error, ValueError):
            return value
        return "sha256:" + hashlib.sha256(raw).hexdigest()
    if isinstance(value, str):
        return normalise_text(value, options)
    return value  # a JSON value: dict equality ignores key order
