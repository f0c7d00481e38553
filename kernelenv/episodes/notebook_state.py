"""Notebook state across an episode's steps: display ids, widget models, and the folds that
rebuild the final notebook from observations (pure logic, no I/O).

A step's observation is never changed after it is returned. What a step does to the outputs
of *earlier* steps (``handle.update(...)``, or a new display with an id shown before) is
reported in its own observation, as ``metadata["display_updates"]``; the widget models it
creates or changes are reported as ``metadata["widget_state"]``. Export, journal recovery and
replay rebuild the notebook as Jupyter would show it by folding those over the steps
(:func:`apply_display_updates`, :func:`widget_state_metadata`), so a journal holds everything
a recovered notebook needs.

These are the semantics of nbclient (``_display_id_map``, ``store_widget_state``), and of
JupyterLab, applied to a whole episode.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..runtime.outputs import WIDGET_STATE_KEY, StepDisplays

# Notebook metadata key and MIME type under which JupyterLab and nbconvert find widget models.
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"

# Observation metadata key of the updates a step made to earlier steps' outputs (the journal
# stores it with the observation, and export folds it; widget state has WIDGET_STATE_KEY).
DISPLAY_UPDATES_KEY = "display_updates"

# Display-id locations an episode remembers; beyond it, outputs of later steps are no longer
# updated across steps (a hostile cell could otherwise grow the index without bound).
MAX_DISPLAY_LOCATIONS = 100_000


@dataclass
class DisplayIndex:
    """Where every output with a display id is shown, over a whole episode.

    nbclient's ``_display_id_map`` (``{display_id: {cell: [output index]}}``), with steps
    (counted from 1, as exported cells are) in place of cells. Only locations are kept: the
    outputs themselves stay in the observations.
    """

    locations: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    count: int = 0

    def step_done(
        self, step: int, displays: StepDisplays, *, max_bytes: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Record a finished step and say what it changed in earlier steps.

        Every display id the step sent (``displays.last``) rewrites the outputs shown under
        that id in earlier steps with the last data sent; then the step's own outputs with an
        id are remembered for later steps.

        Args:
            step: The step's number, counted from 1.
            displays: What the step's collector saw (see :class:`StepDisplays`).
            max_bytes: Cap on the data reported; updates beyond it are dropped.

        Returns:
            The updates (``{"display_id", "step", "output_index", "data", "metadata"}``, one per
            earlier output, in step order) and whether some were dropped by the cap.
        """
        updates: list[dict[str, Any]] = []
        used = 0
        # An id whose last bundle the collector could not keep leaves earlier outputs stale.
        dropped = any(
            set(self.locations.get(display_id, {})) - {step} for display_id in displays.dropped
        )
        for display_id, bundle in displays.last.items():
            size = bundle_size(bundle)
            for earlier, indices in sorted(self.locations.get(display_id, {}).items()):
                if earlier == step:
                    continue
                for index in indices:
                    if used + size > max_bytes:
                        dropped = True
                        continue
                    used += size
                    updates.append(
                        {
                            "display_id": display_id,
                            "step": earlier,
                            "output_index": index,
                            "data": dict(bundle.get("data") or {}),
                            "metadata": dict(bundle.get("metadata") or {}),
                        }
                    )
        for display_id, indices in displays.locations.items():
            room = MAX_DISPLAY_LOCATIONS - self.count
            kept = list(indices[: max(room, 0)])
            if kept:
                self.locations.setdefault(display_id, {})[step] = kept
                self.count += len(kept)
        updates.sort(key=lambda u: (u["step"], u["output_index"]))
        return updates, dropped


def bundle_size(bundle: dict[str, Any]) -> int:
    """Characters of a MIME bundle's data (what output caps count)."""
    return sum(
        len(value) if isinstance(value, str) else len(json.dumps(value, default=str))
        for value in (bundle.get("data") or {}).values()
    )


def apply_display_updates(
    step_outputs: Sequence[Sequence[dict[str, Any]]],
    step_updates: Sequence[Sequence[dict[str, Any]] | None],
) -> list[list[dict[str, Any]]]:
    """Each step's outputs as the notebook shows them at the end of the episode.

    Folds every step's ``display_updates`` over the outputs the steps' observations returned,
    in step order. Pure: the inputs are not modified (an updated output is a new dict).

    Args:
        step_outputs: The outputs of steps 1..n, as their observations returned them.
        step_updates: The ``metadata["display_updates"]`` of steps 1..n (None when absent).

    Returns:
        The outputs of steps 1..n with every update applied. Updates naming a step or an
        output that does not exist (a damaged journal) are ignored.
    """
    result = [list(outputs) for outputs in step_outputs]
    for updates in step_updates:
        for update in updates or ():
            step = _int(update.get("step"))
            if step is not None and 1 <= step <= len(result):
                apply_display_update(result[step - 1], update)
    return result


def apply_display_update(outputs: list[dict[str, Any]], update: dict[str, Any]) -> bool:
    """Apply one display update to the step it names, whose outputs are ``outputs``.

    The updated output is replaced by a new dict (the old one is not modified). Returns False,
    changing nothing, when the update names no existing output (a damaged journal).
    """
    index = _int(update.get("output_index"))
    if index is None or not 0 <= index < len(outputs):
        return False
    outputs[index] = {
        **outputs[index],
        "data": dict(update.get("data") or {}),
        "metadata": dict(update.get("metadata") or {}),
    }
    return True


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def widget_state_metadata(
    step_states: Iterable[dict[str, Any] | None],
) -> dict[str, Any] | None:
    """The notebook's ``metadata.widgets``, folded from every step's ``widget_state``.

    Does what nbclient's ``set_widgets_metadata`` does after its last cell: each model's
    state is merged over the steps, buffers are kept per path, and only models whose state
    names a ``_model_name`` are written (closed models are kept, as nbclient keeps them).

    Args:
        step_states: The ``metadata["widget_state"]`` of every step, in order (None when
            absent): ``{model_id: {"state": {...}, "buffers": [{"path", "data", "encoding"}]}}``.

    Returns:
        ``{"application/vnd.jupyter.widget-state+json": {"state": ..., "version_major": 2,
        "version_minor": 0}}``, or None when the episode made no widget.
    """
    states: dict[str, dict[str, Any]] = {}
    buffers: dict[str, dict[tuple[str, ...], dict[str, Any]]] = {}
    for step_state in step_states:
        for model_id, delta in (step_state or {}).items():
            if not isinstance(delta, dict):
                continue
            states.setdefault(model_id, {}).update(delta.get("state") or {})
            for buffer in delta.get("buffers") or ():
                path = tuple(str(part) for part in buffer.get("path") or ())
                buffers.setdefault(model_id, {})[path] = dict(buffer)
    models = {}
    for model_id, state in states.items():
        if "_model_name" not in state:
            continue
        model = {
            "model_name": state.get("_model_name"),
            "model_module": state.get("_model_module"),
            "model_module_version": state.get("_model_module_version"),
            "state": state,
        }
        if buffers.get(model_id):
            model["buffers"] = list(buffers[model_id].values())
        models[model_id] = model
    if not models:
        return None
    return {WIDGET_STATE_MIME: {"state": models, "version_major": 2, "version_minor": 0}}


def notebook_view(
    observations: Sequence[Any],
) -> tuple[list[list[dict[str, Any]]], dict[str, Any] | None]:
    """The outputs of every step and the widget metadata, as the final notebook shows them.

    Args:
        observations: The steps' observations, in order (anything with ``outputs`` and
            ``metadata``; review steps have no outputs).
    """
    outputs = apply_display_updates(
        [observation.outputs for observation in observations],
        [observation.metadata.get(DISPLAY_UPDATES_KEY) for observation in observations],
    )
    widgets = widget_state_metadata(
        observation.metadata.get(WIDGET_STATE_KEY) for observation in observations
    )
    return outputs, widgets
