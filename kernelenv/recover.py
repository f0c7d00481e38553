"""``kernelenv recover``: notebooks of the episodes that were running when a process died."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
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
