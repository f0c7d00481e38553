"""``kernelenv replay`` and ``kernelenv recover``: episodes re-run, and rebuilt from journals."""

from __future__ import annotations

import argparse
import sys

# Exit codes: 0 every cell matched, 1 some cell diverged, 2 the notebook could not be replayed.
EXIT_MATCH = 0
EXIT_DIVERGED = 1
EXIT_UNUSABLE = 2


def add_arguments_replay(parser: argparse.ArgumentParser) -> None:
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


def run_replay(args: argparse.Namespace) -> int:
    import anyio
    import nbformat

    from ..env import KernelEnv
    from ..errors import KernelEnvError
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

def add_arguments_recover(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--journal-dir",
        help="the journal's directory (default: $KERNELENV_JOURNAL_DIR, else the user state dir)",
    )
    parser.add_argument(
        "--out", default=".", help="where to write <episode_id>.ipynb files (default: here)"
    )
    parser.add_argument(
        "--all", action="store_true", help="also write episodes that ended normally"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_recover(args: argparse.Namespace) -> int:
    from .journal import default_journal_dir, recover_all

    journal_dir = args.journal_dir or default_journal_dir()
    written = recover_all(
        journal_dir, args.out, include_ended=args.all, progress=False if args.quiet else None
    )
    for path in written:
        print(path)
    if not written:
        print(f"no {'' if args.all else 'interrupted '}episodes in {journal_dir}")
    return 0
