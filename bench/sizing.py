"""Sizing figures for docs/scale.md: private memory per idle kernel, fresh episodes a second,
journal bytes per episode. ``python bench/sizing.py`` (on an otherwise idle machine).

Memory is the USS (pages no other process shares) of each process a pool started, read with
psutil once the pool holds its kernels idle; an episode is ``reset`` + one ``step`` + close on
a shared pool, several at once; the journal is what ``Journal`` writes for such episodes.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from kernelenv import Journal, KernelEnv, KernelPool

MiB = 1024 * 1024


async def idle_memory(kernels: int) -> dict[str, float]:
    async with KernelPool(size=kernels) as pool:
        while pool.ready_count < kernels:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # let start-up settle
        uss = []
        for process in psutil.Process().children(recursive=True):
            try:
                uss.append(process.memory_full_info().uss)
            except psutil.Error:
                continue
    # Every process of the pool: the template, the kernels and (at bwrap) each kernel's init.
    return {
        "processes": len(uss),
        "total_MiB": sum(uss) / MiB,
        "per_kernel_MiB": sum(uss) / kernels / MiB,
        "largest_MiB": max(uss) / MiB,
    }


async def episode(pool: KernelPool, journal: Journal | None, steps: int) -> None:
    async with KernelEnv(pool=pool, journal=journal) as env:
        await env.reset()
        for i in range(steps):
            await env.step(f"x = {i} * 2\nprint('step', x)")


async def throughput(episodes: int, concurrency: int, pool_size: int) -> float:
    async with KernelPool(size=pool_size) as pool:
        await episode(pool, None, 1)  # the template is up
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                await episode(pool, None, 1)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(episodes)))
        return episodes / (time.perf_counter() - started)


async def journal_bytes(episodes: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        journal = Journal(directory)
        async with KernelPool(size=2) as pool:
            for _ in range(episodes):
                await episode(pool, journal, steps)
        journal.close()
        return sum(p.stat().st_size for p in Path(directory).iterdir()) / episodes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"commit {commit}, {psutil.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.1f} GiB, Python {platform.python_version()}")
    memory = await idle_memory(args.kernels)
    print(f"idle kernels: {args.kernels}, processes {memory['processes']}, "
          f"USS total {memory['total_MiB']:.0f} MiB, per kernel {memory['per_kernel_MiB']:.1f} "
          f"MiB (largest process {memory['largest_MiB']:.0f} MiB)")
    rates = [await throughput(args.episodes, args.concurrency, 4) for _ in range(3)]
    print(f"fresh episodes/s (reset + 1 step + close, {args.concurrency} at once, pool of 4): "
          f"median {statistics.median(rates):.1f} of {[round(r, 1) for r in rates]}")
    for steps in (1, 3, 10):
        print(f"journal bytes/episode of {steps} small steps: {await journal_bytes(5, steps):.0f}")


if __name__ == "__main__":
    asyncio.run(main())
