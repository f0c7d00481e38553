"""The load test: many WebSocket sessions stepping at once, each checking it sees only its own state.

Every session stores a secret of its own in its kernel and a counter; each step prints both,
and a step that prints anything else is cross-talk, as is a state whose episode id or step count
is not the session's. The same number of kernels driven by raw jupyter_client is the yardstick
for throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..runtime.pool import KernelPool
from .raw import raw_execute
from .stats import Figures, LoadRun, Results

STEP_CODE = "counter += 1\nprint(secret, counter)"

# The contenders, in the order they run: the server with its default journal (written and
# flushed a step), with the journal also fsynced a step, and the yardstick.
WEBSOCKET_RUNS = {
    "flush": "kernelenv over the WebSocket",
    "fsync": "kernelenv over the WebSocket, journal with fsync",
}
RAW = "raw jupyter_client, same number of kernels"


def setup_code(secret: str) -> str:
    """The first cell of a session: its secret and a counter at zero."""
    return f"secret = {secret!r}\ncounter = 0"


@dataclass
class Tally:
    """What the sessions of one contender saw."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    cross_talk: int = 0
    examples: list[str] = field(default_factory=list)

    def error(self, what: str, count: int = 1) -> None:
        self.errors += count
        if len(self.examples) < 5:
            self.examples.append(what)

    def mismatch(self, what: str) -> None:
        self.cross_talk += 1
        if len(self.examples) < 5:
            self.examples.append(what)


@dataclass
class Session:
    """A set-up session of one contender.

    ``step()`` runs :data:`STEP_CODE` and returns what it printed; ``finish(steps)`` checks the
    session's final state.
    """

    secret: str
    step: Callable[[], Awaitable[str]]
    finish: Callable[[int], Awaitable[None]] | None = None


async def drive(sessions: list[Session], steps: int, tally: Tally) -> float:
    """Step every session ``steps`` times at once; returns the wall time of the whole burst."""

    async def run(session: Session) -> None:
        for n in range(1, steps + 1):
            started = time.perf_counter()
            try:
                stdout = await session.step()
            except Exception as exc:  # counted: the load test reports errors, it does not stop
                tally.error(f"step {n}: {type(exc).__name__}: {exc}", steps - n + 1)
                return
            tally.latencies.append(time.perf_counter() - started)
            if stdout != f"{session.secret} {n}\n":
                tally.mismatch(f"step {n} expected {session.secret} {n}, saw {stdout!r}")
        if session.finish is not None:
            try:
                await session.finish(steps)
            except Exception as exc:
                tally.error(f"final state: {type(exc).__name__}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(run(s) for s in sessions))
    return time.perf_counter() - started


def summary(name: str, count: int, steps: int, tally: Tally, wall_s: float | None) -> LoadRun:
    """A :class:`LoadRun` from what the sessions saw."""
    done = len(tally.latencies)
    return LoadRun(
        contender=name,
        sessions=count,
        steps_per_session=steps,
        errors=tally.errors,
        cross_talk=tally.cross_talk,
        throughput_steps_s=done / wall_s if wall_s and done else None,
        wall_s=wall_s,
        latency=Figures.of(tally.latencies, scale=1000) if tally.latencies else None,
        error_examples=tally.examples,
    )


async def load_websocket(count: int, steps: int, *, journal: str = "flush") -> LoadRun:
    """``count`` WebSocket sessions on one ``kernelenv serve``, ``steps`` steps each."""
    from .server_peer import ServerProcess, WireSession

    tally = Tally()
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            ServerProcess(pool_size=2, max_sessions=count + 4, journal=journal)
        )

        async def open_session(index: int) -> Session | None:
            secret, episode_id = uuid.uuid4().hex, f"load-{index}-{uuid.uuid4().hex[:8]}"
            try:
                wire = await stack.enter_async_context(WireSession(server.ws_url))
                reply = await wire.reset(episode_id=episode_id)
                seen = reply.get("observation", {}).get("metadata", {}).get("episode_id")
                if seen not in (None, episode_id):
                    tally.mismatch(f"reset of {episode_id} answered for episode {seen}")
                await wire.step(setup_code(secret))
            except Exception as exc:
                tally.error(f"session {index} set-up: {type(exc).__name__}: {exc}", steps)
                return None

            async def step() -> str:
                data = await wire.step(STEP_CODE)
                observation = data["observation"]
                if observation.get("exit_code") != 0:
                    raise RuntimeError(f"exit code {observation.get('exit_code')}: "
                                       f"{observation.get('stderr', '')[-300:]}")
                return observation.get("stdout", "")

            async def finish(step_count: int) -> None:
                state = await wire.state()
                if state.get("episode_id") != episode_id or state.get("step_count") != step_count + 1:
                    tally.mismatch(f"state of {episode_id} after {step_count + 1} steps: {state}")

            return Session(secret, step, finish)

        opened = await asyncio.gather(*(open_session(i) for i in range(count)))
        sessions = [s for s in opened if s is not None]
        wall_s = await drive(sessions, steps, tally) if sessions else None
    return summary(WEBSOCKET_RUNS[journal], count, steps, tally, wall_s)


async def load_raw(count: int, steps: int) -> LoadRun:
    """``count`` kernels driven by raw jupyter_client in this process, ``steps`` steps each."""
    tally = Tally()
    async with KernelPool(size=0) as pool:
        kernels = await asyncio.gather(*(pool.acquire() for _ in range(count)))
        try:
            sessions = []
            for kernel in kernels:
                secret = uuid.uuid4().hex
                await raw_execute(kernel.client, setup_code(secret))

                async def step(client: Any = kernel.client) -> str:
                    return (await raw_execute(client, STEP_CODE))["stdout"]

                sessions.append(Session(secret, step))
            wall_s = await drive(sessions, steps, tally)
        finally:
            for kernel in kernels:
                pool.release(kernel)
    return summary(RAW, count, steps, tally, wall_s)


async def run_load_test(results: Results, sessions: int, steps: int) -> None:
    """Run both contenders (WebSocket first, then raw) and record figures and target checks."""
    from .server_peer import server_available

    print(f"load test: {sessions} concurrent sessions x {steps} steps")
    runs = []
    if server_available():
        for journal in WEBSOCKET_RUNS:
            runs.append(await load_websocket(sessions, steps, journal=journal))
    else:
        results.notes.append("Load test over the WebSocket not run: no `kernelenv serve`.")
    runs.append(await load_raw(sessions, steps))
    for run in runs:
        results.load.append(run)
        latency = run.latency.p50 if run.latency else float("nan")
        print(f"  {run.contender:<52} errors {run.errors} cross-talk {run.cross_talk} "
              f"throughput {run.throughput_steps_s or 0:.0f} steps/s  p50 {latency:.1f} ms")
        for example in run.error_examples:
            print(f"    e.g. {example}")
    by_name = {run.contender: run for run in runs}
    raw = by_name[RAW]
    web_runs = [by_name[name] for name in WEBSOCKET_RUNS.values() if name in by_name]
    results.check("load.errors", f"load test errors ({sessions} sessions x {steps} steps, "
                  "every WebSocket run)", sum(r.errors for r in web_runs) if web_runs else None,
                  "", "0", 0)
    results.check("load.cross_talk", "load test cross-talk (every WebSocket run)",
                  sum(r.cross_talk for r in web_runs) if web_runs else None, "", "0", 0)
    for key, name in (("load.throughput", WEBSOCKET_RUNS["flush"]),
                      ("load.throughput_fsync", WEBSOCKET_RUNS["fsync"])):
        run = by_name.get(name)
        ratio = (run.throughput_steps_s / raw.throughput_steps_s
                 if run and run.throughput_steps_s and raw.throughput_steps_s else None)
        results.check(key, f"load test throughput, {name.removeprefix('kernelenv ')} over raw",
                      ratio, "x", ">= 0.8x", 0.8, at_least=True)
