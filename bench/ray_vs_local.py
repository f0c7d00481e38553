"""Reset and step latency of KernelEnv on local kernels and on Ray actors, measured alternately.

Run: ``python bench/ray_vs_local.py [--rounds 30]`` (needs ``kernelenv[ray]``; starts a local
Ray). Prints medians and the Ray/local ratio; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from kernelenv import KernelEnv, KernelPool


async def measure(env: KernelEnv, steps: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    await env.reset()
    reset_s = time.perf_counter() - started
    step_s = []
    for _ in range(steps):
        started = time.perf_counter()
        await env.step("x = 1")
        step_s.append(time.perf_counter() - started)
    return reset_s, step_s


async def main(rounds: int, steps: int) -> None:
    from kernelenv.ray_backend import RayKernelPool

    results: dict[str, dict[str, list[float]]] = {
        name: {"reset": [], "step": []} for name in ("local", "ray")
    }
    async with KernelPool(size=2) as local, RayKernelPool(
        actors=1, size=2, actor_options={"num_cpus": 0.5}
    ) as remote:
        pools = {"local": local, "ray": remote}
        for name in pools:  # warm-up round, not counted
            async with KernelEnv(pool=pools[name]) as env:
                await measure(env, steps)
        for _ in range(rounds):
            for name, pool in pools.items():  # A B A B: both see the same machine load
                async with KernelEnv(pool=pool) as env:
                    reset_s, step_s = await measure(env, steps)
                results[name]["reset"].append(reset_s)
                results[name]["step"].extend(step_s)
                await asyncio.sleep(0.3)  # let the pools refill off the clock
    print(f"{'':8}{'local ms':>10}{'ray ms':>10}{'ratio':>8}")
    for what in ("reset", "step"):
        local_ms = statistics.median(results["local"][what]) * 1000
        ray_ms = statistics.median(results["ray"][what]) * 1000
        print(f"{what:8}{local_ms:10.2f}{ray_ms:10.2f}{ray_ms / local_ms:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="episodes per backend")
    parser.add_argument("--steps", type=int, default=20, help="steps per episode")
    args = parser.parse_args()
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=False, log_to_driver=False, object_store_memory=80 * 1024**2)
    try:
        asyncio.run(main(args.rounds, args.steps))
    finally:
        ray.shutdown()
