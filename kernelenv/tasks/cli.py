"""``kernelenv tasks list | show | validate | import``: browse, check and import task libraries."""

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
    _library_option(listing)
    listing.add_argument("--family", help="only this family")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = actions.add_parser("show", help="show what an agent sees of a task")
    _library_option(show)
    show.add_argument("task_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    validate = actions.add_parser(
        "validate", help="replay reference, empty and wrong attempts and check their grades"
    )
    _library_option(validate)
    validate.add_argument("task_ids", nargs="*", metavar="TASK_ID", help="default: every task")
    validate.add_argument("--jobs", type=int, default=2, help="tasks validated at once")
    validate.add_argument("--json", action="store_true", help="print JSON")
    _add_import_arguments(actions)


def _library_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--library", dest="library_dir", default=None, metavar="DIR",
        help="a folder of task notebooks (same as `kernelenv tasks --dir DIR ...`)",
    )


def _add_import_arguments(actions: argparse._SubParsersAction) -> None:
    from ..sandbox.config import SANDBOX_LEVELS
    from .importers import FORMATS

    importing = actions.add_parser(
        "import", help="turn a dataset file (JSON lines) into a folder of task notebooks",
        description="Turn each record of a HumanEval, MBPP or other JSON-lines file into a task "
        "notebook. The reference runs its tests once to record their calls, in a fresh sandboxed "
        "kernel (a dataset is untrusted code); records whose reference fails its own tests are "
        "skipped and reported.",
    )
    importing.add_argument("format", choices=FORMATS, help="the dataset's layout")
    importing.add_argument("file", help="a .jsonl or .jsonl.gz file")
    importing.add_argument("--out", required=True, help="folder to write the notebooks to")
    importing.add_argument("--difficulty", default="medium", choices=["easy", "medium", "hard"])
    importing.add_argument("--step-timeout", type=float, default=10.0,
                           help="step budget of the tasks, s (also each hidden call's)")
    importing.add_argument("--grade-timeout", type=float, default=30.0,
                           help="budget of the hidden collect and grader cells, s")
    importing.add_argument("--max-steps", type=int, default=30, help="steps per episode")
    importing.add_argument("--jobs", type=int, default=2, help="records recorded at once")
    importing.add_argument("--sandbox", choices=SANDBOX_LEVELS,
                           help="containment of the kernels running the dataset's code "
                           "(default: the strongest this machine supports)")
    importing.add_argument("--show-tests", type=int, default=1,
                           help="mbpp: assertions shown in the prompt (they name the function)")
    generic = importing.add_argument_group("jsonl field names")
    generic.add_argument("--id-field", default="task_id")
    generic.add_argument("--prompt-field", default="prompt")
    generic.add_argument("--solution-field", default="solution")
    generic.add_argument("--tests-field", default="tests",
                         help="test code, or a list of assert lines")
    generic.add_argument("--entry-point-field", default="entry_point",
                         help="the function's name (default: found from the tests)")
    generic.add_argument("--setup-field", default="setup")
    generic.add_argument("--id-prefix", default="", help="prefix of the task ids")


def run(args: argparse.Namespace) -> int:
    """Run a ``tasks`` subcommand; returns the exit code."""
    from ..errors import TaskFormatError, UnknownTaskError
    from .library import TaskLibrary

    if args.tasks_action == "import":
        return _import(args)
    library = TaskLibrary(getattr(args, "library_dir", None) or args.tasks_dir)
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


def _import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..errors import DatasetFormatError
    from .format import TaskLimits
    from .importers import JsonlFields, import_dataset

    fields = JsonlFields(
        id=args.id_field, prompt=args.prompt_field, solution=args.solution_field,
        tests=args.tests_field, entry_point=args.entry_point_field, setup=args.setup_field,
        prefix=args.id_prefix,
    )
    limits = TaskLimits(
        step_timeout_s=args.step_timeout, grade_timeout_s=args.grade_timeout,
        max_steps=args.max_steps,
    )
    with tqdm(desc="importing", unit="task", file=sys.stderr) as bar:
        try:
            report = import_dataset(
                args.format, args.file, args.out, fields=fields, shown_tests=args.show_tests,
                difficulty=args.difficulty, limits=limits, jobs=args.jobs, sandbox=args.sandbox,
                progress=lambda where, problem: bar.update(1),
            )
        except (DatasetFormatError, ValueError) as exc:
            print(f"kernelenv tasks import: {exc}", file=sys.stderr)
            return 2
    for where, why in report.skipped:
        print(f"skipped {where}: {why}", file=sys.stderr)
    print(f"{len(report.written)} task notebooks written to {args.out}"
          f" ({len(report.skipped)} records skipped)")
    return 0 if report.written else 1


def add_arguments_eval(parser: argparse.ArgumentParser) -> None:
    """Options of ``kernelenv eval``."""
    from ..sandbox.config import SANDBOX_LEVELS

    parser.add_argument("--library", help="folder of task notebooks (default: the shipped one)")
    parser.add_argument("--completions", required=True,
                        help="JSON lines with task_id and completion (several per task allowed)")
    parser.add_argument("--out", help="JSON lines receiving one result row per completion")
    parser.add_argument("--workers", type=int, default=2, help="completions graded at once")
    parser.add_argument("--notebooks", metavar="DIR", help="write each attempt as a notebook")
    parser.add_argument("--sandbox", choices=SANDBOX_LEVELS, help="kernel containment")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--fresh-kernels", action="store_true",
        help="grade each completion in a fresh episode and two fresh kernels instead of "
        "throwaway forks of warm kernels (slower; the same results)",
    )


def run_eval(args: argparse.Namespace) -> int:
    """Grade the completions; prints the summary (exit 2 on unusable input)."""
    import anyio

    from ..errors import DatasetFormatError, TaskFormatError, UnknownTaskError
    from .evaluation import evaluate, summary_text

    try:
        report = anyio.run(lambda: evaluate(
            args.completions, library=args.library, workers=args.workers, out=args.out,
            notebooks=args.notebooks, sandbox=args.sandbox, progress=True,
            forks=not args.fresh_kernels,
        ))
    except (DatasetFormatError, TaskFormatError, UnknownTaskError) as exc:
        print(f"kernelenv eval: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(report.summary.model_dump_json(indent=2))
    else:
        print(summary_text(report.summary))
    return 0
