"""Benchmark: KernelEnv's step and reset against raw jupyter_client, side by side in one run.

Prints medians, p10 to p90 and ratios. Contenders alternate (A B A B ...) so that the noise
of this machine hits both alike. Not a test: nothing here asserts a timing.

    python bench/bench_env.py [--steps 400] [--resets 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from kernelenv import KernelEnv, KernelPool
from kernelenv.kernel import Kernel


def percentiles(samples: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples, n=10)
    return {"p10": qs[0], "p50": statistics.median(samples), "p90": qs[-1],
            "p99": statistics.quantiles(samples, n=100)[-1] if len(samples) >= 100 else max(samples)}


def row(name: str, samples_s: list[float]) -> dict[str, float]:
    p = {k: v * 1000 for k, v in percentiles(samples_s).items()}
    print(f"  {name:<44} p50 {p['p50']:8.2f} ms   p10-p90 {p['p10']:7.2f}-{p['p90']:8.2f}   "
          f"p99 {p['p99']:8.2f}   n={len(samples_s)}")
    return p


async def raw_execute(kernel: Kernel, code: str) -> None:
    """The floor: a raw async jupyter_client execute, waiting for reply and idle."""
    client = kernel.client
    msg_id = client.execute(code)
    reply = idle = False
    while not (reply and idle):
        if not reply:
            msg = await client.get_shell_msg()
            reply = msg["parent_header"].get("msg_id") == msg_id
        if not idle:
            msg = await client.get_iopub_msg()
            idle = (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "idle")


async def bench_step(n: int) -> dict:
    print(f"trivial step (`1+1`), {n} alternating runs each")
    async with KernelPool(size=2) as pool:
        raw_kernel = await pool.acquire()
        async with KernelEnv(pool=pool) as env:
            await env.reset()
            for _ in range(20):  # warm both up
                await raw_execute(raw_kernel, "1+1")
                await env.step("1+1")
            raw, ours = [], []
            for _ in range(n):
                t = time.perf_counter()
                await raw_execute(raw_kernel, "1+1")
                raw.append(time.perf_counter() - t)
                t = time.perf_counter()
                await env.step("1+1")
                ours.append(time.perf_counter() - t)
        pool.release(raw_kernel)
    r, o = row("raw jupyter_client execute", raw), row("KernelEnv.step", ours)
    ratio = o["p50"] / r["p50"]
    print(f"  ratio KernelEnv / raw at the median: {ratio:.3f}x (target <= 1.15x)\n")
    return {"raw": r, "kernelenv": o, "ratio_p50": ratio}


async def bench_reset(n: int) -> dict:
    print(f"reset, {n} alternating runs each")
    pooled, cold = [], []
    async with KernelPool(size=1) as warm_pool, KernelPool(size=0) as cold_pool:
        async with KernelEnv(pool=warm_pool) as warm_env, KernelEnv(pool=cold_pool) as cold_env:
            await warm_env.reset()
            for _ in range(n):
                # Let the warm pool refill, as it does between episodes in real use.
                while warm_pool.ready_count < 1:
                    await asyncio.sleep(0.01)
                t = time.perf_counter()
                await warm_env.reset()
                pooled.append(time.perf_counter() - t)
                t = time.perf_counter()
                await cold_env.reset()
                cold.append(time.perf_counter() - t)
    p, c = row("reset with a ready pooled kernel", pooled), row("reset with a cold kernel start", cold)
    print(f"  ratio cold / pooled at the median: {c['p50'] / p['p50']:.1f}x "
          "(target: pooled p50 <= 15 ms, p99 <= 50 ms)\n")
    return {"pooled": p, "cold": c}


async def main(steps: int, resets: int) -> None:
    await bench_step(steps)
    await bench_reset(resets)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--resets", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.resets))
