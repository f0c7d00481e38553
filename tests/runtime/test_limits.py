"""Every byte a kernel sends counts against a cap: floods between steps and oversized messages."""

from __future__ import annotations

import json

import psutil
import pytest

from kernelenv import Journal, KernelEnv, StepStatus
from kernelenv.runtime.limits import DEFAULT_MAX_MESSAGE_BYTES, LateBacklog

pytestmark = pytest.mark.anyio

CAP = 1_000_000
MARKER_SLACK = 1_000  # the visible markers a capped observation may carry besides the cap

# A thread that writes 300 MB to stdout in 100 kB pieces, long after its cell ended.
FLOOD = """\
import sys, threading, time
flood_done = threading.Event()
def flood():
    piece = 'x' * 100_000
    for i in range(3_000):
        sys.stdout.write(piece)
        if i % 10 == 9:
            time.sleep(0.01)
    flood_done.set()
threading.Thread(target=flood, daemon=True).start()
"""


def late_bytes(observation) -> int:
    return len(json.dumps(observation.metadata.get("late_output", [])))


def output_text_bytes(observation) -> int:
    total = 0
    for output in observation.outputs:
        total += len(output.get("text", ""))
        total += sum(len(str(value)) for value in output.get("data", {}).values())
    return total


def test_the_late_backlog_keeps_at_most_its_limit_and_says_how_much_it_dropped():
    backlog = LateBacklog(limit_bytes=1000, max_message_bytes=10_000)
    message = {"msg_type": "stream", "parent_header": {"msg_id": "old"},
               "content": {"name": "stdout", "text": "x" * 300}}
    for _ in range(10):
        backlog.add(message, 400)
    backlog.add({"msg_type": "status", "parent_header": {}, "content": {}}, 50)  # not output
    items, dropped, lost = backlog.take()
    assert len(items) == 3 and dropped == 8 * 400 and not lost  # two kept, one marker
    assert "3200 bytes dropped" in items[-1]["content"]["text"]
    assert backlog.take() == ([], 0, False)  # it starts empty again


async def test_a_thread_flooding_stdout_between_steps_stays_capped(shared_pool, tmp_path):
    journal = Journal(tmp_path / "journal")
    process = psutil.Process()
    async with KernelEnv(pool=shared_pool, step_timeout_s=60, journal=journal) as env:
        await env.reset()
        baseline = process.memory_info().rss
        peak = 0
        await env.step(FLOOD)
        observations = []
        for _ in range(100):
            observation = await env.step("flood_done.wait(1)")
            observations.append(observation)
            peak = max(peak, process.memory_info().rss - baseline)
            if observation.return_value == "True":
                break
        assert observations[-1].return_value == "True", "the flood did not finish"
        dropped = sum(o.metadata.get("late_output_dropped_bytes", 0) for o in observations)
        lost = any(o.metadata.get("late_output_lost") or o.metadata.get("output_lost")
                   for o in observations)
        assert dropped > 100_000_000 or lost  # most of the 300 MB was refused, visibly
        for observation in observations:
            assert output_text_bytes(observation) <= CAP + MARKER_SLACK
            assert len(observation.stdout) <= CAP + MARKER_SLACK
            assert late_bytes(observation) <= CAP + MARKER_SLACK
        capped = [o for o in observations if o.output_truncated]
        assert capped and all("kernelenv:" in (o.stderr + json.dumps(o.metadata)) for o in capped)

        after = await env.step("1 + 1")
        assert after.return_value == "2" and after.status is StepStatus.OK
        # One journal line holds one step: its outputs, their text again as stdout/stderr,
        # and late output, each capped.
        lines = journal.path_of(env.state.episode_id).read_bytes().splitlines()
        assert max(len(line) for line in lines) <= 3 * (CAP + MARKER_SLACK) + 64_000
    assert peak < 150_000_000, f"the test process grew by {peak / 1e6:.0f} MB"


async def test_a_message_over_the_size_limit_is_dropped_and_reported(shared_pool):
    async with KernelEnv(pool=shared_pool, step_timeout_s=60) as env:
        await env.reset()
        huge = DEFAULT_MAX_MESSAGE_BYTES * 3
        observation = await env.step(
            "from IPython.display import display\n"
            f"display({{'text/plain': 'y' * {huge}}}, raw=True)"
        )
        assert observation.status is not StepStatus.TIMEOUT
        assert observation.metadata["output_lost"] is True and observation.output_truncated
        assert "larger than" in observation.stderr and "yyyy" not in observation.stderr
        assert len(observation.model_dump_json()) < 10_000
        # IOPub works again: the next cells show their output.
        after = await env.step("print('alive'); 1 + 1")
        assert (after.stdout, after.return_value) == ("alive\n", "2")

        # An oversized reply on the shell channel (a pager payload) is lost the same way.
        observation = await env.step(
            "get_ipython().payload_manager.write_payload("
            f"{{'source': 'page', 'data': {{'text/plain': 'z' * {huge}}}, 'start': 0}})"
        )
        assert observation.metadata["output_lost"] is True
        assert observation.error is not None and observation.error.ename == "OutputLost"
        after = await env.step("print('still alive'); 2 + 2")
        assert (after.stdout, after.return_value) == ("still alive\n", "4")
