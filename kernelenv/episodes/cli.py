"""``kernelenv replay`` and ``kernelenv recover``: episodes re-run, and rebuilt from journals."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Exit codes: 0 every cell matched, 1 some cell diverged, 2 the notebook could not be replayed.
EXIT_MATCH = 0
EXIT_DIVERGED = 1
EXIT_UNUSABLE = 2


# The comparison's switches (kernelenv.episodes.compare.CompareOptions), one flag each.
STRICT_FLAGS = {
    "strict_images": "compare image bytes, not just image types",
    "strict_svg": "compare SVG as text, not as XML",
    "strict_tracebacks": "keep traceback cell headers (they differ between IPython versions)",
    "strict_streams": "compare stream outputs one by one (no merging, no stderr/stdout reorder)",
    "strict_widget_ids": "keep widget model ids (random in every run)",
    "strict_text": "keep addresses, kernel directories, In[N], timings and UUIDs in text",
    "compare_metadata": "compare output metadata too",
    "compare_execution_count": "compare execution counts too",
}


def add_arguments_replay(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="the .ipynb to replay (exported by kernelenv or any)")
    for name, help_text in STRICT_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), action="store_true", help=help_text)
    parser.add_argument("--strict", action="store_true", help="all of the --strict-*/--compare-*")
    parser.add_argument(
        "--step-timeout",
        type=float,
        default=30.0,
        help="budget of a cell without its own, in seconds; an overrun is interrupted",
    )
    parser.add_argument(
        "--cwd",
        default="work",
        metavar="notebook|work|PATH",
        help="working directory: the notebook's directory, the kernel's own empty one "
        "(default), or PATH",
    )
    parser.add_argument(
        "--copy-cwd",
        action="store_true",
        help="work in a copy of that directory (writable; the original stays untouched)",
    )
    parser.add_argument(
        "--skip-tag",
        default="skip-execution",
        help="cells with this tag are not run (default: skip-execution; '' runs every cell)",
    )
    parser.add_argument(
        "--allow-errors",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="an error is an output like any other (default); with --no-allow-errors an "
        "error in a cell without the raises-exception tag is a divergence, as in nbclient",
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
    from ..sandbox.config import SandboxConfig
    from .compare import CompareOptions
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

    options = CompareOptions(**{name: args.strict or getattr(args, name) for name in STRICT_FLAGS})

    # A sandboxed kernel sees nothing of this machine's folders but its own: the folder it is
    # to work in is shown to it read-only (unless it works in a copy).
    readable = None
    if not args.copy_cwd and args.cwd != "work":
        folder = Path(args.notebook).parent if args.cwd == "notebook" else Path(args.cwd)
        readable = SandboxConfig(extra_readable=(str(folder.resolve()),))

    async def main():
        # pool_size=0: one kernel started on demand, no spare started in the background.
        env = KernelEnv(step_timeout_s=args.step_timeout, pool_size=0, sandbox=readable)
        async with env:
            return await replay_notebook(
                trajectory,
                env,
                options=options,
                cwd=args.cwd,
                copy_cwd=args.copy_cwd,
                skip_tag=args.skip_tag or None,
                allow_errors=args.allow_errors,
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


def add_arguments_journal(parser: argparse.ArgumentParser) -> None:
    from .retention import DEFAULT_MAX_AGE_DAYS, DEFAULT_MAX_FILES, DEFAULT_MAX_MB

    parser.add_argument("action", choices=["prune"], help="prune: remove the oldest files")
    parser.add_argument(
        "--dir", help="the journal directory (default: $KERNELENV_JOURNAL_DIR, else the server's)"
    )
    parser.add_argument("--max-age-days", type=float, default=DEFAULT_MAX_AGE_DAYS,
                        help="remove files older than this (default %(default)g; 0: no age bound)")
    parser.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES,
                        help="keep the newest this many files (default %(default)d; 0: all)")
    parser.add_argument("--max-mb", type=int, default=DEFAULT_MAX_MB,
                        help="keep the newest files up to this many MiB (default %(default)d; 0: all)")


def run_journal(args: argparse.Namespace) -> int:
    """``kernelenv journal prune``: the server's retention, applied by hand (or from cron)."""
    from .journal import JOURNAL_SUFFIX, default_journal_dir
    from .retention import Retention, prune

    directory = Path(args.dir) if args.dir else default_journal_dir()
    try:
        retention = Retention.from_settings(args.max_age_days, args.max_files, args.max_mb)
    except ValueError as exc:
        print(f"kernelenv journal: {exc}", file=sys.stderr)
        return 2
    removed = prune(directory, retention, suffix=JOURNAL_SUFFIX)
    print(f"removed {len(removed)} journal files from {directory}")
    return 0
