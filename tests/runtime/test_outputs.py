"""IOPub messages to outputs and observations, with canned messages (no kernel)."""

from __future__ import annotations

from kernelenv.models import StepStatus
from kernelenv.runtime.outputs import OutputCollector, strip_ansi


def msg(msg_type: str, **content) -> dict:
    return {"msg_type": msg_type, "content": content, "header": {"msg_type": msg_type},
            "parent_header": {"msg_id": "m"}, "metadata": {}}


def test_streams_of_the_same_name_merge_and_split_by_name():
    c = OutputCollector()
    c.feed(msg("stream", name="stdout", text="a\n"))
    c.feed(msg("stream", name="stdout", text="b\n"))
    c.feed(msg("stream", name="stderr", text="warn\n"))
    c.feed(msg("stream", name="stdout", text="c\n"))
    assert [o["text"] for o in c.outputs] == ["a\nb\n", "warn\n", "c\n"]
    obs = c.to_observation(StepStatus.OK, reply={"status": "ok", "execution_count": 3})
    assert obs.stdout == "a\nb\nc\n"
    assert obs.stderr == "warn\n"
    assert obs.execution_count == 3
    assert obs.exit_code == 0


def test_execute_result_is_the_return_value():
    c = OutputCollector()
    c.feed(msg("execute_input", code="1+1", execution_count=7))
    c.feed(msg("execute_result", data={"text/plain": "2"}, metadata={}, execution_count=7))
    obs = c.to_observation(StepStatus.OK)
    assert obs.return_value == "2"
    assert obs.execution_count == 7
    assert obs.outputs == [{"output_type": "execute_result", "data": {"text/plain": "2"},
                            "metadata": {}, "execution_count": 7}]


def test_clear_output_now_and_with_wait():
    c = OutputCollector()
    c.feed(msg("stream", name="stdout", text="old\n"))
    c.feed(msg("clear_output", wait=False))
    assert c.outputs == []
    c.feed(msg("stream", name="stdout", text="kept until next\n"))
    c.feed(msg("clear_output", wait=True))
    assert len(c.outputs) == 1  # wait=True clears only when the next output arrives
    c.feed(msg("stream", name="stdout", text="new\n"))
    assert [o["text"] for o in c.outputs] == ["new\n"]


def test_update_display_data_rewrites_every_output_with_that_id():
    c = OutputCollector()
    for _ in range(2):
        c.feed(msg("display_data", data={"text/plain": "0%"}, metadata={},
                   transient={"display_id": "bar"}))
    c.feed(msg("display_data", data={"text/plain": "other"}, metadata={}))
    c.feed(msg("update_display_data", data={"text/plain": "100%"}, metadata={},
               transient={"display_id": "bar"}))
    assert [o["data"]["text/plain"] for o in c.outputs] == ["100%", "100%", "other"]
    assert all("transient" not in o for o in c.outputs)


def test_error_output_has_plain_traceback_and_goes_to_stderr():
    c = OutputCollector()
    tb = ["\x1b[31mTraceback\x1b[0m (most recent call last)", "\x1b[1;31mZeroDivisionError\x1b[0m: x"]
    c.feed(msg("error", ename="ZeroDivisionError", evalue="x", traceback=tb))
    obs = c.to_observation(StepStatus.ERROR, reply={"status": "error", "ename": "ZeroDivisionError",
                                                    "evalue": "x", "traceback": tb})
    assert obs.exit_code == 1
    assert obs.error.ename == "ZeroDivisionError"
    assert obs.error.traceback == ["Traceback (most recent call last)", "ZeroDivisionError: x"]
    assert "\x1b" not in obs.stderr and "ZeroDivisionError: x" in obs.stderr
    # the stored notebook output keeps what the kernel sent, as Jupyter stores it
    assert c.outputs[0]["traceback"] == tb


def test_output_beyond_the_cap_is_cut_with_a_marker_but_results_are_kept():
    c = OutputCollector(max_output_bytes=100)
    for _ in range(50):
        c.feed(msg("stream", name="stdout", text="x" * 10))
    c.feed(msg("display_data", data={"text/html": "<b>" * 100}, metadata={}))
    c.feed(msg("execute_result", data={"text/plain": "42"}, metadata={}, execution_count=1))
    obs = c.to_observation(StepStatus.OK)
    assert obs.output_truncated
    assert obs.stdout.startswith("x" * 100)
    assert "output truncated" in obs.stdout
    assert len(obs.stdout) < 200
    assert obs.return_value == "42"
    assert not any(o.get("data", {}).get("text/html") for o in obs.outputs)


def test_a_cut_never_splits_a_utf8_character():
    c = OutputCollector(max_output_bytes=5)
    c.feed(msg("stream", name="stdout", text="ééé"))  # 6 bytes
    assert c.outputs[0]["text"].startswith("éé")
    assert c.truncated


def test_strip_ansi():
    assert strip_ansi("\x1b[0;31mred\x1b[0m \x1b]0;title\x07ok") == "red ok"


def test_timeout_error_overrides_and_has_its_exit_code():
    from kernelenv.models import ErrorInfo

    c = OutputCollector()
    c.feed(msg("stream", name="stdout", text="partial\n"))
    obs = c.to_observation(StepStatus.TIMEOUT, error=ErrorInfo(ename="TimeoutError", evalue="slow"))
    assert (obs.status, obs.exit_code) == (StepStatus.TIMEOUT, 124)
    assert obs.stdout == "partial\n"
    assert "TimeoutError: slow" in obs.stderr


def test_outputs_match_what_nbformat_builds_from_the_same_messages():
    import nbformat
    from nbformat.v4 import output_from_msg as nbformat_output_from_msg

    from kernelenv.runtime.outputs import output_from_msg

    messages = [
        msg("execute_result", data={"text/plain": "2", "text/html": "<b>2</b>"},
            metadata={"isolated": True}, execution_count=4),
        msg("display_data", data={"image/png": "iVBORw0KGgo="}, metadata={},
            transient={"display_id": "d1"}),
        msg("error", ename="ZeroDivisionError", evalue="division by zero",
            traceback=["Traceback", "ZeroDivisionError: division by zero"]),
        msg("stream", name="stderr", text="careful\n"),
    ]
    for message in messages:
        ours = output_from_msg(message)
        assert ours == nbformat_output_from_msg(message)
        nbformat.validate(nbformat.from_dict(ours), ref=ours["output_type"], version=4)


def test_clear_output_after_a_cut_makes_room_again_and_the_cut_is_still_reported():
    c = OutputCollector(max_output_bytes=50)
    c.feed(msg("stream", name="stdout", text="x" * 80))
    c.feed(msg("stream", name="stdout", text="dropped"))
    c.feed(msg("clear_output", wait=False))
    c.feed(msg("stream", name="stdout", text="final\n"))
    obs = c.to_observation(StepStatus.OK)
    assert obs.stdout == "final\n"
    assert obs.output_truncated is True


def test_display_updates_count_against_the_cap():
    c = OutputCollector(max_output_bytes=10_000)
    for _ in range(10):  # ten small outputs of one display id...
        c.feed(msg("display_data", data={"text/plain": "."}, metadata={},
                   transient={"display_id": "d"}))
    # ...then one update that would make each of them big: 10 x 2000 bytes is past the cap.
    c.feed(msg("update_display_data", data={"text/plain": "x" * 2000}, metadata={},
               transient={"display_id": "d"}))
    assert c.truncated
    assert sum(len(o.get("data", {}).get("text/plain", "")) for o in c.outputs) <= 10_000
    assert "output truncated" in c.outputs[-1]["text"]
    small = OutputCollector(max_output_bytes=10_000)
    small.feed(msg("display_data", data={"text/plain": "."}, metadata={},
                   transient={"display_id": "d"}))
    small.feed(msg("update_display_data", data={"text/plain": "y" * 2000}, metadata={},
                   transient={"display_id": "d"}))
    assert not small.truncated and small.outputs[0]["data"]["text/plain"] == "y" * 2000


def test_what_a_kernel_crafts_counts_as_what_it_holds_here():
    """Counting characters let empty lists in metadata, many results and long display ids
    through uncounted; the cap counts what the decoded content holds in this process."""
    c = OutputCollector(max_output_bytes=1_000_000)
    for _ in range(5):  # 1.8 MB of JSON each, 25 MB of Python lists: the first is dropped
        c.feed(msg("display_data", data={}, metadata={"m": [[]] * 450_000}, transient={}))
    assert c.truncated and not any(o.get("metadata", {}).get("m") for o in c.outputs)
    results = OutputCollector(max_output_bytes=1_000_000)
    for n in range(20):  # only a cell's own result is kept past the cap
        results.feed(msg("execute_result", data={"text/plain": "y" * 900_000}, metadata={},
                         execution_count=n))
    assert len([o for o in results.outputs if o["output_type"] == "execute_result"]) <= 2
    long_id = OutputCollector()
    long_id.feed(msg("display_data", data={"text/plain": "."}, metadata={},
                     transient={"display_id": "d" * 1_900_000}))
    assert not long_id.displays.locations  # not a display id anyone would make: not tracked


def test_a_cells_own_result_passes_the_cap_only_cut_to_it():
    c = OutputCollector(max_output_bytes=100_000)
    c.feed(msg("execute_result", execution_count=1, data={
        "text/plain": "z" * 300_000, "application/json": [[]] * 100_000, "text/html": "<i>ok</i>",
    }, metadata={"m": [[]] * 100_000}))
    (result,) = c.outputs
    assert c.truncated and result["metadata"] == {}
    assert set(result["data"]) == {"text/plain", "text/html"}
    assert len(result["data"]["text/plain"]) < 101_000 and "truncated" in result["data"]["text/plain"]
