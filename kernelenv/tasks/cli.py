"""``kernelenv tasks list | show | validate``: browse and check the task library."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``tasks`` subcommands."""
    parser.add_argument(
        "--dir", dest="tasks_dir", default=None, help="a folder of task notebooks "
        "(default: the library shipped with kernelenv)"
    )
    actions = parser.add_subparsers(dest="tasks_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list the tasks")
    listing.add_argument("--family", help="only this family")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = actions.add_parser("show", help="show what an agent sees of a task")
    show.add_argument("task_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    validate = actions.add_parser(
        "validate", help="replay reference, empty and wrong attempts and check their grades"
    )
    validate.add_argument("task_ids", nargs="*", metavar="TASK_ID", help="default: every task")
    validate.add_argument("--jobs", type=int, default=2, help="tasks validated at once")
    validate.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Run a ``tasks`` subcommand; returns the exit code."""
    from ..errors import TaskFormatError, UnknownTaskError
    from .library import TaskLibrary

    library = TaskLibrary(args.tasks_dir)
    try:
        if args.tasks_action == "list":
            return _list(library, args)
        if args.tasks_action == "show":
            return _show(library, args)
        return _validate(library, args)
    except (UnknownTaskError, TaskFormatError) as exc:
        print(f"kernelenv tasks: {exc}", file=sys.stderr)
        return 2


def _list(library, args: argparse.Namespace) -> int:
    from .library import TaskSummary

    tasks = [t for t in library.tasks.values() if args.family in (None, t.family.value)]
    tasks.sort(key=lambda t: (t.family.value, ["easy", "medium", "hard"].index(t.difficulty), t.id))
    rows = [TaskSummary.of(t).model_dump(mode="json") for t in tasks]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(r["id"]) for r in rows), default=2)
    for row in rows:
        print(f"{row['id']:<{width}}  {row['family']:<13}  {row['difficulty']:<6}  {row['title']}")
    return 0


def _show(library, args: argparse.Namespace) -> int:
    task = library.get(args.task_id)
    # Only what an agent sees: never the solution, the collect or the grader cells.
    shown = task.model_dump(
        mode="json", include={"id", "version", "family", "difficulty", "title", "limits", "context"}
    )
    shown["prompt"] = task.prompt
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    print(f"{task.id} (v{task.version}): {task.title}")
    print(f"family {task.family.value}, difficulty {task.difficulty.value}, "
          f"limits {task.limits.model_dump()}")
    print()
    print(task.prompt)
    for name, value in task.context.items():
        print(f"\n--- {name} ---\n{value}")
    return 0


def _validate(library, args: argparse.Namespace) -> int:
    import anyio

    from .validation import validate_tasks

    ids = args.task_ids or library.ids()
    tasks = [library.get(task_id) for task_id in ids]
    results = anyio.run(lambda: validate_tasks(tasks, jobs=args.jobs))
    if args.json:
        print(json.dumps([r.model_dump() | {"ok": r.ok} for r in results], indent=2))
    else:
        for result in results:
            scores = "  ".join(
                f"{c.attempt} {c.score:.3f}{'' if c.ok else ' FAIL (' + c.expected + ')'}"
                for c in result.checks
            )
            print(f"{'ok  ' if result.ok else 'FAIL'}  {result.task_id:<32} {scores}")
        failed = sum(not r.ok for r in results)
        print(f"{len(results) - failed}/{len(results)} tasks valid")
    return 0 if all(r.ok for r in results) else 1
