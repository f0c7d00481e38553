"""Throwaway forks, host side: run cells in a throwaway fork of a warm kernel (see
:mod:`kernelenv.runtime.throwaway`) and turn what comes back into an observation.

A throwaway costs a fork and the cells, not a kernel: the kernel forks a plain child that runs
the cells with IPython's shell and exits; the kernel, its variables and its files are as before.
"""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import KernelCommunicationError
from ..models import CodeObservation, ErrorInfo, StepStatus
from .outputs import OutputCollector, error_from_content

log = logging.getLogger(__name__)

# How long past the cells' budgets the host waits for the kernel's answer (the kernel enforces
# the budgets itself; this only bounds a kernel that stopped answering).
EVALUATE_MARGIN_S = 10.0


@dataclass
class ForkCell:
    """A cell run in a throwaway fork.

    Attributes:
        code: The cell's source.
        timeout_s: Its budget: interrupted (SIGINT) past it, killed a grace later.
        silent: Run as a silent execute (no execution count, no history), as hidden task code.
        capture: Its outputs come back (a step's cell); others' are dropped.
        stop_on: Statuses (``ok``, ``error``, ``timeout``) after which no further cell runs.
    """

    code: str
    timeout_s: float
    silent: bool = False
    capture: bool = False
    stop_on: tuple[str, ...] = ()


@dataclass
class CellEnd:
    """How a cell of a throwaway ended (as the fork reported it)."""

    status: str  # ok, error or timeout
    error: ErrorInfo | None = None
    execution_count: int | None = None


@dataclass
class ForkRun:
    """What a throwaway fork came to."""

    ends: dict[int, CellEnd] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    output_dropped: bool = False
    read: str | None = None
    read_error: dict[str, str] | None = None
    exit_code: int | None = None
    interrupted: list[int] = field(default_factory=list)
    killed_in: int | None = None  # the cell killed after its interrupt did not stop it
    overflow: bool = False  # the fork sent more than it may: killed
    refused: str | None = None  # why the kernel could not fork (threads, child processes)
    again: bool = False  # refused in a batch for want of a child forked ahead: send it alone
    kernel_lost: bool = False  # the warm kernel itself died or stopped answering
    fd_output: dict[str, str] = field(default_factory=dict)
    fd_output_dropped: bool = False

    def died_in(self, index: int) -> bool:
        """Whether the fork ended during cell ``index`` (crashed, exited, or was killed)."""
        return index in self.started and index not in self.ends


async def run_in_fork(
    kernel: Any,
    cells: list[ForkCell],
    *,
    read: str | None = None,
    max_output_bytes: int,
    grace_s: float,
    work_dir: Path | None = None,
) -> ForkRun:
    """Run ``cells`` in a throwaway fork of ``kernel`` (a :class:`~.kernel.Kernel`).

    ``read``: an expression evaluated in the fork after the cells (unless one stopped them),
    whose value comes back as JSON text. ``work_dir``: the folder the fork works in a copy of.
    Never raises for what the cells do; a kernel that died or stopped answering is reported
    (``kernel_lost``) and must be replaced by the caller.
    """
    (run,) = await run_batch_in_forks(
        kernel, [(cells, read)], max_output_bytes=max_output_bytes, grace_s=grace_s,
        work_dir=work_dir,
    )  # fmt: skip
    return run


async def run_batch_in_forks(
    kernel: Any,
    batch: list[tuple[list[ForkCell], str | None]],
    *,
    max_output_bytes: int,
    grace_s: float,
    work_dir: Path | None = None,
    grading: bool = False,
    ahead_only: bool = False,
    own_ipc: bool = False,
) -> list[ForkRun]:
    """Run each ``(cells, read)`` of ``batch`` in a throwaway fork of its own, one after the
    other, in one request to the kernel (as :func:`run_in_fork` each). A kernel lost on the way
    loses the whole batch: every run says ``kernel_lost``.

    ``grading``: ``kernel`` runs nothing but throwaways (a warm grading kernel): what an
    attempt leaves running is killed before the next (see
    :func:`kernelenv.runtime.throwaway.run_batch`). ``ahead_only``: the batch holds attempts'
    code: each runs only in a child forked ahead (see ``run_batch``; the others come back with
    ``again``). ``own_ipc``: the kernel has an IPC namespace of its own (bwrap), whose SysV
    objects a grading kernel removes after each attempt.
    """
    specs = [
        {
            "cells": [
                {"code": c.code, "timeout_s": c.timeout_s, "silent": c.silent,
                 "capture": c.capture, "stop_on": list(c.stop_on)}
                for c in cells
            ],
            "read": read,
            "max_output_bytes": max_output_bytes,
            "grace_s": grace_s,
            "work_dir": str(work_dir) if work_dir is not None else None,
            "own_ipc": own_ipc,
        }
        for cells, read in batch
    ]  # fmt: skip
    expression = (
        "__import__('kernelenv.runtime.throwaway', fromlist=['run_batch'])"
        f".run_batch({json.dumps(specs)!r}, grading={grading!r}, ahead_only={ahead_only!r})"
    )
    budget = EVALUATE_MARGIN_S + sum(
        sum(c.timeout_s for c in cells) + (len(cells) + 2) * grace_s for cells, _ in batch
    )
    try:
        reply = await kernel.evaluate(expression, timeout_s=budget)
    except KernelCommunicationError as exc:
        log.info("kernel %s lost during a throwaway: %s", kernel.kernel_id, exc)
        return [ForkRun(kernel_lost=True, exit_code=kernel.exit_code()) for _ in batch]
    if reply.get("status") != "ok":
        why = f"{reply.get('ename')}: {reply.get('evalue')}"
        if grading:  # a warm grading kernel that fails this way is damaged: replaced, regraded
            log.info("warm kernel %s failed a batch (%s): replaced", kernel.kernel_id, why)
            return [ForkRun(kernel_lost=True, exit_code=kernel.exit_code()) for _ in batch]
        # The kernel could not even start the fork (its own modules broken by earlier steps).
        return [ForkRun(refused=why) for _ in batch]
    try:
        report = json.loads(reply["data"]["text/plain"])
        reports = list(report["batch"])
        if len(reports) != len(batch):
            raise ValueError(f"{len(reports)} reports for {len(batch)} runs")
    except (KeyError, ValueError, TypeError) as exc:
        why = f"the kernel's answer could not be read ({exc})"
        return [ForkRun(refused=why) for _ in batch]
    return [parse_report(r if isinstance(r, dict) else {}) for r in reports]


def parse_report(report: dict[str, Any]) -> ForkRun:
    """A :class:`ForkRun` from the kernel's report (pure). Lines that are not the harness's
    (attempt code can write to the pipe) are ignored."""
    if "refused" in report:
        return ForkRun(refused=str(report["refused"]), again=report.get("again") is True)
    run = ForkRun(
        exit_code=report.get("exit_code"),
        interrupted=list(report.get("interrupted") or []),
        killed_in=report.get("killed_in"),
        overflow=bool(report.get("overflow")),
        fd_output=dict(report.get("fd_output") or {}),
        fd_output_dropped=bool(report.get("fd_output_dropped")),
    )
    current: int | None = None
    for item in report.get("items") or []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("start"), int):
            current = item["start"]
            run.started.add(current)
        elif isinstance(item.get("end"), int) and item["end"] == current:
            error = item.get("error")
            run.ends[current] = CellEnd(
                status=str(item.get("status")),
                error=error_from_content(error) if isinstance(error, dict) else None,
                execution_count=item.get("execution_count"),
            )
        elif isinstance(item.get("o"), dict) and current is not None:
            run.outputs.append({**item["o"], "cell": current})
        elif item.get("dropped") is True:
            run.output_dropped = True
        elif isinstance(item.get("read"), str):
            run.read = item["read"]
        elif isinstance(item.get("read_error"), dict):
            run.read_error = item["read_error"]
    return run


def cell_observation(
    run: ForkRun,
    index: int,
    *,
    timeout_s: float,
    max_output_bytes: int,
    episode_wording: bool = False,
) -> CodeObservation:
    """The observation of cell ``index`` of a throwaway, as a normal step would show it.

    ``episode_wording``: say what a timeout or a crash means as a normal step of a fresh
    episode would (grading a completion that ran as one); otherwise say that the throwaway was
    discarded and the episode is untouched.
    """
    if run.refused is not None:
        message = f"this step cannot run in a throwaway fork: {run.refused}"
        observation = CodeObservation(
            stderr=message + "\n",
            exit_code=StepStatus.ABORTED.exit_code,
            status=StepStatus.ABORTED,
            error=ErrorInfo(ename="ThrowawayRefused", evalue=message),
        )
        observation.metadata["throwaway_refused"] = run.refused
        return observation
    collector = OutputCollector(max_output_bytes)
    for output in run.outputs:
        if output.get("cell") == index and isinstance(output.get("content"), dict):
            collector.feed({"msg_type": output.get("msg_type"), "content": output["content"]})
    for name in ("stdout", "stderr"):
        if run.fd_output.get(name):
            collector.feed({"msg_type": "stream",
                            "content": {"name": name, "text": run.fd_output[name]}})  # fmt: skip
    if run.output_dropped or run.fd_output_dropped:
        collector.mark_truncated()
    end = run.ends.get(index)
    if run.kernel_lost:
        observation = collector.to_observation(
            StepStatus.KERNEL_DIED, error=_died_error(run.exit_code, episode_wording=True)
        )
        observation.metadata["kernel_exit_code"] = run.exit_code
        return observation
    if end is not None and end.status in ("ok", "error"):
        reply = {"status": end.status, "execution_count": end.execution_count}
        if end.error is not None:
            reply.update(end.error.model_dump())
        return collector.to_observation(StepStatus(end.status), reply=reply)
    if end is not None or run.killed_in == index:  # timed out: interrupted, or killed
        interrupted = end is not None
        if interrupted:
            evalue = f"The step exceeded its {timeout_s:g} s budget and was interrupted."
        elif episode_wording:
            evalue = (f"The step exceeded its {timeout_s:g} s budget and did not stop on "
                      "interrupt; the kernel was replaced and the episode's variables are lost.")
        else:
            evalue = (f"The step exceeded its {timeout_s:g} s budget and did not stop on "
                      "interrupt; the throwaway fork was killed (the episode is unchanged).")
        reply = {"status": "error", "execution_count": end.execution_count} if end else None
        observation = collector.to_observation(
            StepStatus.TIMEOUT, reply=reply, error=ErrorInfo(ename="TimeoutError", evalue=evalue)
        )
        observation.metadata["kernel_replaced"] = not interrupted and episode_wording
        return observation
    if run.overflow:
        error = ErrorInfo(
            ename="OutputLost",
            evalue="The throwaway fork sent more than it may and was killed.",
        )
        return collector.to_observation(StepStatus.KERNEL_DIED, error=error)
    observation = collector.to_observation(
        StepStatus.KERNEL_DIED, error=_died_error(run.exit_code, episode_wording=episode_wording)
    )
    observation.metadata["kernel_exit_code"] = run.exit_code
    return observation


def _died_error(code: int | None, *, episode_wording: bool) -> ErrorInfo:
    how = f" (exit code {code})" if code is not None else ""
    if code is not None and code < 0:
        try:
            how = f" (killed by signal {signal.Signals(-code).name})"
        except ValueError:
            how = f" (killed by signal {-code})"
    if episode_wording:
        evalue = (f"The kernel process died{how} while running this cell. The episode's "
                  "variables are lost; the next step runs on a fresh kernel.")
    else:
        evalue = (f"The throwaway fork died{how} while running this cell. It was discarded: "
                  "the episode's kernel, variables and files are as before.")
    return ErrorInfo(ename="KernelDied", evalue=evalue)
