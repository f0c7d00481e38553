"""``kernelenv bench``: run the side-by-side benchmarks and the load test, write the results table."""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback
from pathlib import Path

DEFAULT_OUTPUT = Path("bench/results/latest.md")
CASE_NAMES = (
    "step", "compute", "reset", "replay", "memory", "fresh", "codeeval", "fork", "eval", "grading",
    "load",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true",
        help="few samples and a small load test: checks every case runs (figures are rough)",
    )
    parser.add_argument(
        "--only", default=",".join(CASE_NAMES),
        help=f"comma-separated cases to run (default: all of {','.join(CASE_NAMES)})",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT,
        help=f"Markdown results file; the JSON goes beside it (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument("--sessions", type=int, help="load test sessions (default 64; quick 4)")
    parser.add_argument(
        "--session-steps", type=int, help="load test steps per session (default 100; quick 10)"
    )
    parser.add_argument("--steps", type=int, help="trivial-step samples per contender")
    parser.add_argument(
        "--smolagents-venv", type=Path,
        help="virtual env holding smolagents, created if missing (default: .venv-smolagents)",
    )


def _command_line(args: argparse.Namespace) -> str:
    parts = ["kernelenv bench"]
    if args.quick:
        parts.append("--quick")
    if args.only != ",".join(CASE_NAMES):
        parts.append(f"--only {args.only}")
    for flag in ("sessions", "session_steps", "steps"):
        if getattr(args, flag) is not None:
            parts.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}")
    parts.append(f"--output {args.output}")
    return " ".join(parts)


async def _main(args: argparse.Namespace, cases: list[str]) -> int:
    from dataclasses import replace

    from . import report, suite
    from .load import run_load_test
    from .machine import describe
    from .stats import Results

    cfg = suite.QUICK if args.quick else suite.SuiteConfig()
    cfg = replace(cfg, smolagents_venv=args.smolagents_venv)
    if args.steps:
        cfg = replace(cfg, steps=args.steps)
    sessions = args.sessions or (4 if args.quick else 64)
    session_steps = args.session_steps or (10 if args.quick else 100)
    results = Results(
        title="kernelenv benchmark results", mode="quick" if args.quick else "full",
        machine=describe(),
    )
    results.machine["command"] = _command_line(args)
    failed = []
    for case in cases:
        before = len(results.rows)
        try:
            if case == "load":
                await run_load_test(results, sessions, session_steps)
            else:
                await suite.CASES[case](cfg, results)
        except Exception as exc:  # one broken case must not hide the others' figures
            failed.append(case)
            traceback.print_exc()
            del results.rows[before:]
            for key in suite.ROWS:
                if key.startswith(case + "."):
                    results.rows.append(suite.new_row(key, skipped=f"failed: {exc}"))
            results.notes.append(f"Case `{case}` failed: {type(exc).__name__}: {exc}")
        print()
    markdown, json_path = report.write(results, args.output)
    print("targets:")
    for check in results.checks:
        if args.quick and check.met is not None:
            verdict = "not judged in quick mode"  # a few samples say nothing about a target
        else:
            verdict = {True: "met", False: "NOT MET", None: "not measured"}[check.met]
        value = "–" if check.value is None else f"{check.value:.2f} {check.unit}"
        print(f"  {check.what:<66} {value:>12}  wanted {check.target:<12} {verdict}")
    print(f"\nwrote {markdown} and {json_path}")
    if failed:
        print(f"cases that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    cases = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASE_NAMES]
    if unknown:
        print(f"unknown case(s) {unknown}; choose from {', '.join(CASE_NAMES)}", file=sys.stderr)
        return 2
    return asyncio.run(_main(args, cases))
