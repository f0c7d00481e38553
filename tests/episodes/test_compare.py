"""The tolerant comparison of outputs: each tolerance, and the strict option that turns it off."""

from __future__ import annotations

import pytest

from kernelenv.episodes.compare import (
    CompareOptions,
    canonical_svg,
    coalesce_streams,
    normalise_output,
    normalise_text,
    normalise_traceback,
    outputs_diff,
    outputs_equal,
)


def rich(data, kind="display_data", **extra):
    return [{"output_type": kind, "data": data, "metadata": {}, **extra}]


def stream(name, text):
    return {"output_type": "stream", "name": name, "text": text}


def test_what_legitimately_varies_in_text():
    assert normalise_text("\x1b[31m<object at 0x7fb1a094d3d0>\x1b[0m") == "<object at 0x<address>>"
    assert normalise_text("Cell In[12], line 1") == "Cell In[N], line 1"
    assert normalise_text("'/tmp/kernelenv-jqay3pou/k2-ab9208ad/work'") == "'<kernel-dir>/work'"
    assert normalise_text("CPU times: user 3 µs\nWall time: 6.2 µs") == (
        "CPU times: <time>\nWall time: <time>"
    )
    assert normalise_text('File /tmp/ipykernel_4242/3.py:2') == "File <CELL>:2"
    # What must not be normalised away: values.
    assert normalise_text("sum 2517") != normalise_text("sum 2518")
    strict = CompareOptions(strict_text=True)
    assert normalise_text("\x1b[1m0x7fb1a094d3d0\x1b[0m", strict) == "0x7fb1a094d3d0"


def test_traceback_headers_of_three_ipython_versions_compare_equal():
    ipython7 = ["\x1b[1;32m<ipython-input-1-9abc744909d9>\x1b[0m in \x1b[0;36m<module>\x1b[0m\n"]
    ipython8 = ["Input In [1], in <cell line: 2>()\n"]
    ipython9 = ["Cell In[7], line 12\n"]
    kernelenv = ["File <cell>:12\n"]
    expected = ["<CELL>"]
    assert normalise_traceback(ipython7) == expected
    assert normalise_traceback(ipython8) == expected
    assert normalise_traceback(ipython9) == expected
    assert normalise_traceback(kernelenv) == expected
    strict = CompareOptions(strict_tracebacks=True)
    assert normalise_traceback(ipython7, strict) != normalise_traceback(ipython9, strict)
    # The frames' content still counts.
    assert normalise_traceback(["Cell In[1], line 2", "ZeroDivisionError"]) != (
        normalise_traceback(["Cell In[1], line 2", "KeyError"])
    )


def test_svg_is_compared_as_xml():
    a = '<svg height="100" width="100">\n  <circle cx="50" r="40" fill="red" />\n</svg>'
    b = '<svg width="100" height="100"><circle fill="red" cx="50" r="40"></circle></svg>'
    assert canonical_svg(a) == canonical_svg(b)
    assert outputs_equal(rich({"image/svg+xml": a}), rich({"image/svg+xml": b}))
    assert not outputs_equal(
        rich({"image/svg+xml": a}), rich({"image/svg+xml": b}), CompareOptions(strict_svg=True)
    )
    other = b.replace('fill="red"', 'fill="blue"')
    assert not outputs_equal(rich({"image/svg+xml": a}), rich({"image/svg+xml": other}))
    assert canonical_svg("<svg><unclosed></svg>") == "<svg><unclosed></svg>"  # not XML: as is


def test_addresses_widget_ids_images_metadata_and_counts():
    a = rich(
        {
            "text/plain": "<object at 0x7f3a12345678>",
            "image/png": "aGVsbG8=\n",
            "application/vnd.jupyter.widget-view+json": {
                "model_id": "abc", "version_major": 2, "version_minor": 0
            },
        },
        kind="execute_result",
        execution_count=1,
    )
    b = rich(
        {
            "text/plain": ["<object at 0x55d0deadbeef>"],
            "image/png": "aGVs\nbG8=",  # the same bytes, wrapped elsewhere
            "application/vnd.jupyter.widget-view+json": {
                "version_minor": 0, "model_id": "def", "version_major": 2
            },
        },
        kind="execute_result",
        execution_count=9,
    )
    b[0]["metadata"] = {"isolated": True}
    assert outputs_equal(a, b)
    assert outputs_equal(a, b, CompareOptions(strict_images=True))
    assert not outputs_equal(a, b, CompareOptions(strict_widget_ids=True))
    assert not outputs_equal(a, b, CompareOptions(compare_execution_count=True))
    assert not outputs_equal(a, b, CompareOptions(compare_metadata=True))
    other_image = [{**b[0], "data": {**b[0]["data"], "image/png": "Ynll"}}]
    assert outputs_equal(a, other_image)
    assert not outputs_equal(a, other_image, CompareOptions(strict_images=True))


def test_streams_are_coalesced_and_flush_races_absorbed():
    split = [stream("stdout", "hel"), stream("stdout", "lo\n"), stream("stderr", "err\n")]
    joined = [stream("stdout", ["hello\n"]), stream("stderr", "err\n")]
    assert outputs_equal(split, joined)
    raced = [stream("stderr", "err\n"), stream("stdout", "hello\n")]
    assert outputs_equal(joined, raced)
    assert not outputs_equal(joined, raced, CompareOptions(strict_streams=True))
    progress = [stream("stdout", "10%\r50%\r100%\n"), stream("stdout", "ab\x08c\n")]
    assert coalesce_streams([normalise_output(o) for o in progress]) == [
        stream("stdout", "100%\nac\n")
    ]


def test_values_still_count_and_the_diff_names_them():
    assert not outputs_equal([stream("stdout", "1\n")], [stream("stdout", "2\n")])
    assert not outputs_equal(rich({"text/plain": "1"}), rich({"text/plain": "1"}) * 2)
    error = {"output_type": "error", "ename": "KeyError", "evalue": "'a'", "traceback": []}
    assert not outputs_equal([error], [{**error, "ename": "IndexError"}])
    diff = outputs_diff([stream("stdout", "1\n")], [stream("stdout", "2\n")])
    assert "\n-1\n" in diff and "\n+2" in diff
    assert outputs_diff([stream("stdout", "1\n")], [stream("stdout", "1\n")]) == ""


def test_strict_turns_every_tolerance_off():
    strict = CompareOptions.strict()
    assert all(getattr(strict, name) for name in strict.__dataclass_fields__)
    assert not any(getattr(CompareOptions(), name) for name in strict.__dataclass_fields__)
    with pytest.raises(TypeError):
        CompareOptions(no_such_option=True)
