"""``kernelenv replay EPISODE.ipynb``: re-run a notebook's cells in a fresh kernel, report divergences."""

from __future__ import annotations

import argparse
import sys

# Exit codes: 0 every cell matched, 1 some cell diverged, 2 the notebook could not be replayed.
EXIT_MATCH = 0
EXIT_DIVERGED = 1
EXIT_UNUSABLE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="the .ipynb to replay (exported by kernelenv or any)")
    parser.add_argument(
        "--strict-images", action="store_true", help="compare image bytes, not just image types"
    )
    parser.add_argument(
        "--step-timeout", type=float, default=30.0, help="default budget of a step, in seconds"
    )
    parser.add_argument(
        "--grade", action="store_true", help="re-grade the replay against the notebook's task"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import anyio
    import nbformat

    from .env import KernelEnv
    from .errors import KernelEnvError
    from .replay import Trajectory, replay_notebook

    try:
        trajectory = Trajectory.from_notebook(args.notebook)
    except (OSError, ValueError, nbformat.ValidationError) as exc:
        print(f"kernelenv replay: cannot read {args.notebook}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.grade and not trajectory.task_id:
        print(
            f"kernelenv replay: {args.notebook} has no task to grade against "
            "(it was not exported from a reset(task_id=...) episode)",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE

    async def main():
        # pool_size=0: one kernel started on demand, no spare started in the background.
        async with KernelEnv(step_timeout_s=args.step_timeout, pool_size=0) as env:
            return await replay_notebook(
                trajectory,
                env,
                strict_images=args.strict_images,
                grade=args.grade,
                progress=False if args.quiet else None,
            )

    try:
        report = anyio.run(main)
    except KernelEnvError as exc:  # e.g. the notebook's task is not in this task library
        print(f"kernelenv replay: cannot replay {args.notebook}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(report.summary())
    return EXIT_MATCH if report.ok else EXIT_DIVERGED
