"""Import datasets of coding problems (HumanEval, MBPP, any JSON lines) as task notebooks.

Each record becomes one notebook of the ``functions`` family (see tasks/README.md): the prompt
the agent sees, the reference solution, and the record's tests as hidden ``collect`` and
``grader`` cells that count every assertion (see :mod:`kernelenv.tasks.assert_harness`). The
reference runs the tests once at import to record the calls the tests make.

A dataset is code from the internet: its reference solution and tests run only in kernels of a
:class:`~kernelenv.runtime.pool.KernelPool` at the default sandbox level (a fresh kernel per
record, the host's secrets scrubbed from its environment, a time limit, and everything it started
killed with it), never in the importing process or a plain subprocess of it.
"""

from __future__ import annotations

import ast
import asyncio
import gzip
import json
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbformat import v4

from ..errors import DatasetFormatError, KernelEnvError
from ..models import StepStatus
from ..runtime.pool import KernelPool
from ..sandbox.config import SandboxConfig
from .assert_harness import CODEC, RECORDER, RUNNER
from .assert_harness import COLLECT as COLLECT_CODE
from .assert_harness import GRADER as GRADER_CODE
from .format import COLLECT, GRADER, PROMPT, SETUP, SOLUTION, TaskLimits, TaskMetadata

FORMATS = ("humaneval", "mbpp", "jsonl")
# Bounds on what a dataset file may ask of the importer.
MAX_RECORD_CHARS = 1_000_000
MAX_RECORDS = 100_000
MAX_RECORDED_CALLS = 10_000
RECORD_TIMEOUT_S = 60.0


@dataclass
class Problem:
    """One coding problem, whatever its dataset's field names."""

    task_id: str
    source_id: str
    title: str
    description: str
    entry_point: str
    solution: str
    tests: str
    starter: str = ""
    setup: str = ""
    call_check: bool = False
    shown_tests: list[str] = field(default_factory=list)


@dataclass
class Recording:
    """What the reference did under the tests (see ``RECORDER``)."""

    calls: list[Any]
    asserts: int
    passed: int
    unencodable: int
    stopped: str | None


@dataclass
class ImportReport:
    """The outcome of an import: notebooks written and records skipped (with why)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


# -- reading records ----------------------------------------------------------------------


def read_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The JSON objects of a ``.jsonl`` (or ``.jsonl.gz``) file, with their line numbers.

    Raises:
        DatasetFormatError: the file is unreadable, a line is not a JSON object, or the file
            is past the importer's bounds.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            count = 0
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                if len(line) > MAX_RECORD_CHARS:
                    raise DatasetFormatError(
                        f"{path.name}:{number}: a record longer than {MAX_RECORD_CHARS} characters"
                    )
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise DatasetFormatError(f"{path.name}:{number}: not JSON: {exc}") from exc
                if not isinstance(record, dict):
                    raise DatasetFormatError(f"{path.name}:{number}: not a JSON object")
                count += 1
                if count > MAX_RECORDS:
                    raise DatasetFormatError(f"{path.name}: more than {MAX_RECORDS} records")
                yield number, record
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path.name}: cannot be read: {exc}") from exc


def task_id_of(source_id: Any, prefix: str = "") -> str:
    """A task id (``[a-z0-9_]+``) for a dataset's id: ``HumanEval/0`` -> ``humaneval_0``."""
    text = re.sub(r"[^a-z0-9]+", "_", f"{prefix}{source_id}".lower()).strip("_")
    if not text:
        raise DatasetFormatError(f"the id {source_id!r} has no letters or digits")
    return text


def _field(record: dict[str, Any], name: str, kinds: type | tuple[type, ...] = str) -> Any:
    if name not in record:
        raise DatasetFormatError(f"no field {name!r} (fields: {', '.join(sorted(record))})")
    value = record[name]
    if not isinstance(value, kinds):
        raise DatasetFormatError(f"field {name!r} is a {type(value).__name__}")
    return value


def _functions_defined(code: str) -> list[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise DatasetFormatError(f"the solution is not Python: {exc}") from exc
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _fenced(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


# -- the formats --------------------------------------------------------------------------


def humaneval_problem(record: dict[str, Any]) -> Problem:
    """A HumanEval record (``task_id``, ``prompt``, ``canonical_solution``, ``test``,
    ``entry_point``): the prompt is the function's signature and docstring, to complete."""
    source_id = str(_field(record, "task_id", (str, int)))
    prompt, entry_point = _field(record, "prompt"), _field(record, "entry_point")
    return Problem(
        task_id=task_id_of(source_id),
        source_id=source_id,
        title=f"{source_id}: {entry_point}",
        description=(
            f"Complete the function `{entry_point}` below: define it in the kernel (run code "
            "with your steps), with this signature and the behaviour its docstring describes.\n\n"
            + _fenced(prompt)
        ),
        entry_point=entry_point,
        starter=prompt,
        solution=prompt + _field(record, "canonical_solution"),
        tests=_field(record, "test"),
        call_check=True,
    )


def mbpp_problem(record: dict[str, Any], *, shown_tests: int = 1) -> Problem:
    """An MBPP record (``task_id``, ``text``, ``code``, ``test_list``, ``test_setup_code``):
    the first ``shown_tests`` assertions are shown, as MBPP's own prompt does, to name the
    function; all of them grade."""
    source_id = str(_field(record, "task_id", (str, int)))
    code = _field(record, "code")
    tests = _field(record, "test_list", list)
    if not tests or not all(isinstance(t, str) for t in tests):
        raise DatasetFormatError("'test_list' must be a non-empty list of strings")
    return _from_asserts(
        task_id=task_id_of(source_id, "mbpp_"),
        source_id=source_id,
        text=_field(record, "text"),
        solution=code,
        tests=tests,
        setup=record.get("test_setup_code") or "",
        shown_tests=shown_tests,
        title_prefix="MBPP/",
    )


def _from_asserts(
    *, task_id: str, source_id: str, text: str, solution: str, tests: list[str], setup: str,
    shown_tests: int, entry_point: str | None = None, title_prefix: str = "",
) -> Problem:
    entry_point = entry_point or _called_function(tests, _functions_defined(solution))
    shown = tests[:shown_tests]
    description = text.strip() + f"\n\nWrite a Python function `{entry_point}`"
    description += (
        " that passes tests such as:\n\n" + _fenced("\n".join(shown)) if shown else "."
    )
    description += "\n\nDefine it in the kernel (run code with your steps); hidden tests call it."
    return Problem(
        task_id=task_id,
        source_id=source_id,
        title=f"{title_prefix}{source_id}: {entry_point}",
        description=description,
        entry_point=entry_point,
        solution=solution,
        tests="\n".join(tests),
        setup=setup,
        shown_tests=shown,
    )


def _called_function(tests: list[str], defined: list[str]) -> str:
    """The solution's function that the tests call (MBPP names it only there)."""
    called: list[str] = []
    for test in tests:
        try:
            tree = ast.parse(test)
        except SyntaxError as exc:
            raise DatasetFormatError(f"a test is not Python: {exc}") from exc
        called += [
            n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        ]
    for name in called:
        if name in defined:
            return name
    raise DatasetFormatError(
        f"the tests call none of the solution's functions ({', '.join(defined) or 'none'})"
    )


@dataclass
class JsonlFields:
    """Field names of a generic JSON-lines dataset (``kernelenv tasks import jsonl``)."""

    id: str = "task_id"
    prompt: str = "prompt"
    solution: str = "solution"
    tests: str = "tests"
    entry_point: str | None = "entry_point"
    setup: str | None = "setup"
    prefix: str = ""


def jsonl_problem(record: dict[str, Any], fields: JsonlFields) -> Problem:
    """A record of any JSON-lines dataset: ``tests`` is test code (with asserts, or a
    ``check(candidate)`` function) or a list of assert lines; the entry point comes from its
    field when present, else from the function the tests call."""
    source_id = str(_field(record, fields.id, (str, int)))
    tests = _field(record, fields.tests, (str, list))
    if isinstance(tests, list) and not all(isinstance(t, str) for t in tests):
        raise DatasetFormatError(f"field {fields.tests!r} must hold strings")
    test_lines = tests if isinstance(tests, list) else [tests]
    entry_point = record.get(fields.entry_point) if fields.entry_point else None
    problem = _from_asserts(
        task_id=task_id_of(source_id, fields.prefix),
        source_id=source_id,
        text=_field(record, fields.prompt),
        solution=_field(record, fields.solution),
        tests=test_lines,
        setup=(record.get(fields.setup) if fields.setup else None) or "",
        shown_tests=0,
        entry_point=entry_point if isinstance(entry_point, str) and entry_point else None,
    )
    try:
        tree = ast.parse(problem.tests)
    except SyntaxError as exc:
        raise DatasetFormatError(f"the tests are not Python: {exc}") from exc
    defines_check = any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
    problem.call_check = defines_check and "check(" not in problem.tests.split("def check", 1)[0]
    return problem


# -- recording and notebooks --------------------------------------------------------------


async def record_reference(
    problem: Problem, pool: KernelPool, *, timeout_s: float = RECORD_TIMEOUT_S
) -> Recording:
    """Run the reference solution under the tests in a fresh kernel of ``pool``; record its calls.

    The recording comes back as the value of an expression (JSON text), not as printed output,
    so the reference's own prints neither mix with it nor get cut by the output cap.

    Raises:
        DatasetFormatError: the reference crashed, hung, or its tests recorded nothing.
    """
    payload = json.dumps({
        "solution": problem.solution, "tests": problem.tests, "starter": problem.starter,
        "setup": problem.setup, "entry_point": problem.entry_point,
        "call_check": problem.call_check,
    })
    code = RECORDER + f"\n_kx_recording = _kx_json.dumps(_kx_record(_kx_json.loads({payload!r})))\n"
    kernel = await pool.acquire(timeout_s=pool.start_timeout_s)
    try:
        outcome = await kernel.execute(code, timeout_s=timeout_s, silent=True)
        observation = outcome.observation
        if observation.status is StepStatus.TIMEOUT:
            raise DatasetFormatError(f"the reference ran past {timeout_s:g} s")
        if observation.status is not StepStatus.OK:
            error = observation.error
            why = f"{error.ename}: {error.evalue}" if error else observation.status.value
            raise DatasetFormatError(f"the reference failed under its tests: {why}")
        reply = await kernel.evaluate("_kx_recording", timeout_s=timeout_s)
    except KernelEnvError as exc:
        raise DatasetFormatError(f"the reference's kernel failed: {exc}") from exc
    finally:
        pool.release(kernel)  # never reused: the next record gets a fresh kernel
    try:
        text = ast.literal_eval(reply["data"]["text/plain"])
        recording = Recording(**json.loads(text))
    except (KeyError, ValueError, TypeError, SyntaxError) as exc:  # the reference exited early
        raise DatasetFormatError("the reference's test run recorded nothing") from exc
    if not recording.asserts:
        raise DatasetFormatError("the tests make no assertion about the function")
    if len(recording.calls) > MAX_RECORDED_CALLS:
        raise DatasetFormatError(f"the tests make more than {MAX_RECORDED_CALLS} distinct calls")
    if recording.passed < recording.asserts:
        raise DatasetFormatError(
            f"the reference passes only {recording.passed}/{recording.asserts} of its assertions"
        )
    if recording.unencodable:
        raise DatasetFormatError(
            f"{recording.unencodable} calls pass arguments that are not plain data"
        )
    return recording


def build_notebook(
    problem: Problem,
    recording: Recording,
    *,
    difficulty: str = "medium",
    limits: TaskLimits | None = None,
    call_timeout_s: float = 5.0,
) -> nbformat.NotebookNode:
    """The task notebook of a problem (pure: no I/O); each hidden call of the attempt's
    function gets ``call_timeout_s`` (at most the step budget)."""
    limits = limits or TaskLimits()
    meta = TaskMetadata(
        id=problem.task_id,
        version=1,
        family="functions",
        difficulty=difficulty,
        title=problem.title,
        source_id=problem.source_id,
        limits=limits,
        context={"entry_point": problem.entry_point, "starter_code": problem.starter},
    )
    constants = (
        f"_KX_ENTRY_POINT = {problem.entry_point!r}\n"
        f"_KX_CALLS = {json.dumps(recording.calls)}\n"
    )
    collect = (
        "# Hidden: call the attempt's function on the tests' recorded arguments. Only the\n"
        "# results leave this kernel (as JSON); the expected values live in the grader.\n"
        + CODEC + "\n" + constants
        + f"_KX_CALL_TIMEOUT_S = {min(call_timeout_s, limits.step_timeout_s)!r}\n"
        + f"_KX_COLLECT_BUDGET_S = {0.8 * limits.grade_timeout_s!r}\n"
        + COLLECT_CODE
    )
    grader = (
        "# Hidden: run the dataset's tests against the recorded results, counting assertions.\n"
        + CODEC + RUNNER + "\n" + constants
        + f"_KX_STARTER = {problem.starter!r}\n"
        f"_KX_SETUP = {problem.setup!r}\n"
        f"_KX_TESTS = {problem.tests!r}\n"
        f"_KX_CALL_CHECK = {problem.call_check!r}\n"
        f"_KX_EXPECTED_ASSERTS = {recording.asserts!r}\n"
        + GRADER_CODE
    )
    cells = [
        v4.new_markdown_cell(
            f"# Task `{problem.task_id}`: {problem.title}\n\nImported by `kernelenv tasks "
            "import`. Run it top to bottom: it runs the reference solution and prints its grade."
        ),
        _tagged(v4.new_markdown_cell(problem.description), PROMPT),
    ]
    if problem.setup.strip():
        cells.append(_tagged(v4.new_code_cell(problem.setup), SETUP))
    cells += [
        _tagged(v4.new_code_cell(problem.solution), SOLUTION),
        _tagged(v4.new_code_cell(collect), COLLECT),
        _tagged(v4.new_code_cell(grader), GRADER),
    ]
    notebook = v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {
        "display_name": "Python 3", "language": "python", "name": "python3"
    }
    notebook.metadata["language_info"] = {"name": "python"}
    notebook.metadata["kernelenv"] = {"task": meta.model_dump(mode="json", exclude_defaults=True)}
    return notebook


def _tagged(cell: nbformat.NotebookNode, role: str) -> nbformat.NotebookNode:
    cell.metadata["tags"] = [role]
    return cell


def problems_of(
    format_name: str,
    path: str | os.PathLike[str],
    *,
    fields: JsonlFields | None = None,
    shown_tests: int = 1,
) -> Iterator[tuple[str, Problem | DatasetFormatError]]:
    """Each record of the file as a :class:`Problem`, or the error that makes it unusable,
    with where it is (``file:line``)."""
    if format_name not in FORMATS:
        raise DatasetFormatError(f"unknown format {format_name!r} (one of {', '.join(FORMATS)})")
    convert: Callable[[dict[str, Any]], Problem] = {
        "humaneval": humaneval_problem,
        "mbpp": lambda r: mbpp_problem(r, shown_tests=shown_tests),
        "jsonl": lambda r: jsonl_problem(r, fields or JsonlFields()),
    }[format_name]
    for number, record in read_records(path):
        where = f"{Path(path).name}:{number}"
        try:
            yield where, convert(record)
        except DatasetFormatError as exc:
            yield where, exc


def import_dataset(
    format_name: str,
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    fields: JsonlFields | None = None,
    shown_tests: int = 1,
    difficulty: str = "medium",
    limits: TaskLimits | None = None,
    jobs: int = 2,
    sandbox: SandboxConfig | str | None = None,
    progress: Callable[[str, str | None], None] | None = None,
) -> ImportReport:
    """Write one task notebook per usable record of a dataset file into ``out``.

    Each record's reference runs in a fresh kernel at ``sandbox`` (None: the default level),
    ``jobs`` at a time. Records whose reference fails its own tests (or that are malformed) are
    skipped and reported with their ``file:line``; ``progress(where, problem_or_None)`` is
    called per record. Blocking; safe to call where an event loop runs (a notebook).

    Raises:
        DatasetFormatError: the file itself is unreadable or malformed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = ImportReport()
    seen: dict[str, str] = {}
    items = []
    for where, problem in problems_of(format_name, path, fields=fields, shown_tests=shown_tests):
        if isinstance(problem, Problem):
            if problem.task_id in seen:
                problem = DatasetFormatError(
                    f"task id {problem.task_id!r} already taken by {seen[problem.task_id]}"
                )
            else:
                seen[problem.task_id] = where
        items.append((where, problem))

    outcomes: dict[str, Path | str] = {}

    def settle(where: str, outcome: Path | str) -> None:
        outcomes[where] = outcome
        if progress is not None:
            progress(where, None if isinstance(outcome, Path) else outcome)

    async def one(pool: KernelPool, slots: asyncio.Semaphore, where: str, problem: Problem) -> None:
        try:
            async with slots:
                recording = await record_reference(problem, pool)
            notebook = build_notebook(problem, recording, difficulty=difficulty, limits=limits)
        except DatasetFormatError as exc:
            settle(where, f"{problem.source_id}: {exc}")
            return
        target = out / f"{problem.task_id}.ipynb"
        nbformat.write(notebook, target)
        settle(where, target)

    async def run_all() -> None:
        problems = [(where, p) for where, p in items if isinstance(p, Problem)]
        for where, problem in items:
            if isinstance(problem, DatasetFormatError):
                settle(where, str(problem))
        if not problems:
            return
        workers = max(1, jobs)
        slots = asyncio.Semaphore(workers)
        async with KernelPool(size=workers, sandbox=sandbox) as pool:
            await asyncio.gather(*(one(pool, slots, where, p) for where, p in problems))

    # On a thread of its own: the caller may already run an event loop (a notebook).
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, run_all()).result()
    for where, _ in items:
        outcome = outcomes[where]
        if isinstance(outcome, Path):
            report.written.append(outcome)
        else:
            report.skipped.append((where, outcome))
    return report
