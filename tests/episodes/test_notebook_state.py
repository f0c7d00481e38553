"""Notebook state across steps, with canned IOPub messages: nbclient's display-id and widget
semantics, reported by the step that makes them, folded back into the final notebook."""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat

from kernelenv.episodes.compare import outputs_equal
from kernelenv.episodes.notebook_state import (
    DISPLAY_UPDATES_KEY,
    WIDGET_STATE_MIME,
    DisplayIndex,
    apply_display_updates,
    notebook_view,
    widget_state_metadata,
)
from kernelenv.models import StepStatus
from kernelenv.runtime.outputs import (
    NOTEBOOK_STATE_TRUNCATED_KEY,
    WIDGET_STATE_KEY,
    OutputCollector,
)

NOTEBOOKS = Path(__file__).resolve().parent / "data" / "nbclient"


def display(value, display_id=None, kind="display_data", update=False):
    content = {"data": {"text/plain": repr(value)}, "metadata": {}}
    if display_id:
        content["transient"] = {"display_id": display_id}
    if kind == "execute_result":
        content["execution_count"] = 5
    return {"msg_type": "update_display_data" if update else kind, "content": content}


def stream(text):
    return {"msg_type": "stream", "content": {"name": "stdout", "text": text}}


def clear(wait=False):
    return {"msg_type": "clear_output", "content": {"wait": wait}}


def comm(msg_type, comm_id, data, buffers=()):
    return {"msg_type": msg_type, "content": {"comm_id": comm_id, "data": data},
            "buffers": list(buffers)}


def run_episode(steps, max_bytes=10**6):
    """Each step's messages through a collector, then the episode's display index, as env.step."""
    index = DisplayIndex()
    observations = []
    for number, messages in enumerate(steps, start=1):
        collector = OutputCollector(max_bytes)
        for message in messages:
            collector.feed(message)
        observation = collector.to_observation(StepStatus.OK)
        updates, dropped = index.step_done(number, collector.displays, max_bytes=max_bytes)
        if updates:
            observation.metadata[DISPLAY_UPDATES_KEY] = updates
        if dropped:
            observation.metadata[NOTEBOOK_STATE_TRUNCATED_KEY] = True
        observations.append(observation)
    return observations


def stored_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    return [cell.outputs for cell in notebook.cells if cell.cell_type == "code"]


def located(observation):
    return [
        (u["display_id"], u["step"], u["output_index"], u["data"]["text/plain"])
        for u in observation.metadata.get(DISPLAY_UPDATES_KEY, [])
    ]


def test_update_display_id_notebook_gives_nbclients_outputs():
    observations = run_episode([
        [],
        [display("above"), display(1, "here"), display("below")],
        [display(2, "here"), display(3, "there"), display(4, "here")],
        [display(5, "there"), display(6, "there", update=True)],
        [display(7, "here"), display(8, "here", update=True),
         display(9, "result", kind="execute_result")],
        [display(10, "result", update=True)],
    ])
    as_returned = copy.deepcopy([o.outputs for o in observations])
    final, widgets = notebook_view(observations)
    for got, want in zip(final, stored_outputs("update-display-id.ipynb"), strict=True):
        assert outputs_equal(want, got), (want, got)
    assert widgets is None
    # Each observation stays what the agent saw; the updating step reports the update.
    assert [o.outputs for o in observations] == as_returned
    assert observations[2].outputs[0]["data"]["text/plain"] == "4"  # a new display with an
    # id already shown in the same step updates the earlier output at once, as in nbclient
    assert ("here", 2, 1, "4") in located(observations[2])
    assert located(observations[5]) == [("result", 5, 1, "10")]
    assert located(observations[4]) == [("here", 2, 1, "8"), ("here", 3, 0, "8"),
                                        ("here", 3, 2, "8")]


def test_clear_output_notebook_gives_nbclients_outputs():
    observations = run_episode([
        [],
        [m for i in range(10) for m in (clear(), stream(f"{i}\n"))],
        [stream("Hello world\n"), clear()],
        [stream("Hello world"), clear(wait=True)],
        [stream("Hello"), clear(wait=True), stream("world")],
        [display("Hello world", "id0")],
        [display("Hello", "id1")],
        [display("world", "id1", update=True)],
        [display("Hello world", "id2"), clear()],
        [display("Hello world", "id3"), clear(wait=True)],
        [display("Hello", "id4"), clear(wait=True), stream("world")],
        [display("Hello world", "id4", update=True)],  # cleared in its step: stays cleared
    ])
    final, _ = notebook_view(observations)
    for got, want in zip(final, stored_outputs("Clear Output.ipynb"), strict=True):
        assert outputs_equal(want, got), (want, got)
    assert observations[6].outputs[0]["data"]["text/plain"] == "'Hello'"
    assert located(observations[7]) == [("id1", 7, 0, "'world'")]
    assert DISPLAY_UPDATES_KEY not in observations[11].metadata


def test_fold_is_pure_and_ignores_damaged_updates():
    outputs = [[{"output_type": "display_data", "data": {"text/plain": "a"}, "metadata": {}}]]
    before = copy.deepcopy(outputs)
    updates = [[
        {"step": 1, "output_index": 0, "data": {"text/plain": "b"}, "metadata": {}},
        {"step": 1, "output_index": 7, "data": {"text/plain": "x"}},  # no such output
        {"step": 9, "output_index": 0, "data": {"text/plain": "x"}},  # no such step
        {"step": "1", "output_index": 0, "data": {"text/plain": "x"}},  # not a number
        {"output_index": 0},
    ]]
    folded = apply_display_updates(outputs, updates)
    assert folded[0][0]["data"] == {"text/plain": "b"}
    assert outputs == before


def test_display_updates_beyond_the_cap_are_dropped_and_flagged():
    big = "x" * 6000
    observations = run_episode(
        [[display("a", "d"), display("b", "d")], [display(big, "d", update=True)]],
        max_bytes=10_000,
    )
    # Two earlier outputs of 6000 characters each: only one fits the step's 10000.
    assert len(observations[1].metadata[DISPLAY_UPDATES_KEY]) == 1
    assert observations[1].metadata[NOTEBOOK_STATE_TRUNCATED_KEY] is True

    huge = "x" * 12_000  # over the collector's own cap: the update cannot even be kept
    observations = run_episode(
        [[display("a", "d")], [display(huge, "d", update=True)], [display(huge, "new")]],
        max_bytes=10_000,
    )
    assert DISPLAY_UPDATES_KEY not in observations[1].metadata
    assert observations[1].metadata[NOTEBOOK_STATE_TRUNCATED_KEY] is True
    # A big display whose id no earlier step shows loses nothing: no flag.
    assert NOTEBOOK_STATE_TRUNCATED_KEY not in observations[2].metadata


LABEL_STATE = {
    "_model_name": "LabelModel",
    "_model_module": "@jupyter-widgets/controls",
    "_model_module_version": "2.0.0",
    "value": "Hello World",
}


def test_widget_state_is_reported_per_step_and_folded_like_nbclient():
    observations = run_episode([
        [comm("comm_open", "L", {"state": LABEL_STATE, "buffer_paths": []}),
         comm("comm_open", "X", {"id": "foo"}),  # not a widget: no state
         display("label")],
        [comm("comm_msg", "L", {"method": "update", "state": {"value": "Bye"},
                                "buffer_paths": []}),
         comm("comm_msg", "L", {"method": "custom", "content": {"msg": "hi"}}),  # ignored
         comm("comm_msg", "I", {"method": "update", "state": {"_model_name": "ImageModel",
              "value": {}}, "buffer_paths": [["value"]]}, [b"\x89PNG"])],
        [comm("comm_msg", "S", {"state": {"value": 3}})],  # never named its model: not saved
    ])
    assert observations[0].metadata[WIDGET_STATE_KEY] == {"L": {"state": LABEL_STATE}}
    assert observations[1].metadata[WIDGET_STATE_KEY]["L"] == {"state": {"value": "Bye"}}
    _, widgets = notebook_view(observations)
    saved = widgets[WIDGET_STATE_MIME]
    assert (saved["version_major"], saved["version_minor"]) == (2, 0)
    assert set(saved["state"]) == {"L", "I"}
    label = saved["state"]["L"]
    assert label["model_name"] == "LabelModel"
    assert label["model_module"] == "@jupyter-widgets/controls"
    assert label["state"] == {**LABEL_STATE, "value": "Bye"}
    assert saved["state"]["I"]["buffers"] == [
        {"data": "iVBORw==", "encoding": "base64", "path": ["value"]}
    ]
    assert widget_state_metadata([None, {}]) is None


def test_widget_state_beyond_the_cap_is_dropped_and_flagged():
    collector = OutputCollector(200)
    collector.feed(comm("comm_open", "big", {"state": {"_model_name": "M", "v": "x" * 500}}))
    collector.feed(comm("comm_open", "small", {"state": {"_model_name": "M"}}))
    observation = collector.to_observation(StepStatus.OK)
    assert set(observation.metadata[WIDGET_STATE_KEY]) == {"small"}
    assert observation.metadata[NOTEBOOK_STATE_TRUNCATED_KEY] is True


def test_hostile_comm_and_display_messages_are_ignored():
    collector = OutputCollector()
    for message in [
        {"msg_type": "comm_msg", "content": {"comm_id": 5, "data": {"state": {}}}},
        {"msg_type": "comm_msg", "content": {"comm_id": "c", "data": ["state"]}},
        {"msg_type": "comm_msg", "content": {"comm_id": "c", "data": {"state": "x"}}},
        {"msg_type": "comm_open", "content": {"comm_id": "c", "data": {
            "state": {"_model_name": "M"}, "buffer_paths": "nope"}}, "buffers": [b"1"]},
        {"msg_type": "display_data", "content": {"data": {"text/plain": "1"}, "metadata": {},
                                                 "transient": {"display_id": ["list"]}}},
        {"msg_type": "update_display_data", "content": {"data": {}, "transient": None}},
    ]:
        collector.feed(message)
    observation = collector.to_observation(StepStatus.OK)
    assert observation.metadata[WIDGET_STATE_KEY] == {"c": {"state": {"_model_name": "M"}}}
    assert collector.displays.locations == {} and collector.displays.last == {}
    assert len(observation.outputs) == 1
