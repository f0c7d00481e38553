"""Importing datasets: HumanEval and MBPP files become task notebooks that validate and run in
plain Jupyter; the assert-counting grader gives partial credit and no free credit."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from kernelenv.errors import DatasetFormatError
from kernelenv.runtime.pool import KernelPool
from kernelenv.tasks import assert_harness
from kernelenv.tasks.importers import (
    JsonlFields,
    humaneval_problem,
    import_dataset,
    jsonl_problem,
    record_reference,
    task_id_of,
)
from kernelenv.tasks.library import TaskLibrary


def test_import_writes_a_task_per_usable_record(imported_library, humaneval_records):
    library = TaskLibrary(imported_library)
    assert library.ids() == ["humaneval_0", "humaneval_1", "mbpp_11", "mbpp_12"]
    add = library.get("humaneval_0")
    assert add.source_id == "HumanEval/0" and add.family.value == "functions"
    assert add.context == {"entry_point": "add", "starter_code": humaneval_records[0]["prompt"]}
    assert "def add(a: int, b: int) -> int:" in add.prompt  # the agent sees the signature
    assert add.limits.step_timeout_s == 4 and add.limits.grade_timeout_s == 20
    # Hidden from the agent: the tests' expected values are only in the grader cell.
    assert "15" not in add.prompt and "15" not in add.collect and "== 15" in add.grader
    mbpp = library.get("mbpp_11")
    assert mbpp.title.startswith("MBPP/11") and 'remove_Occ("hello","l")' in mbpp.prompt
    assert 'remove_Occ("PHP","P")' not in mbpp.prompt  # only the first test is shown
    assert library.get("mbpp_12").setup == "DATA = [10, -4.5, 3]"


def test_a_reference_failing_its_tests_is_skipped_with_its_line(tmp_path, capsys, humaneval_records):
    source = tmp_path / "he.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in humaneval_records[1:]))
    from kernelenv.cli import main

    assert main(["tasks", "import", "humaneval", str(source), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "skipped he.jsonl:2: HumanEval/2: the reference passes only 0/1" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["humaneval_1.ipynb"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"task_id": "x"\n', "he.jsonl:1: not JSON"),
        ("[1, 2]\n", "he.jsonl:1: not a JSON object"),
    ],
)
def test_malformed_dataset_files_name_the_line(tmp_path, content, message):
    source = tmp_path / "he.jsonl"
    source.write_text(content)
    with pytest.raises(DatasetFormatError, match=re.escape(message)):
        import_dataset("humaneval", source, tmp_path / "out")


def test_a_record_without_a_field_is_reported(humaneval_records):
    with pytest.raises(DatasetFormatError, match="no field 'entry_point'"):
        humaneval_problem({k: v for k, v in humaneval_records[0].items() if k != "entry_point"})
    assert task_id_of("HumanEval/163") == "humaneval_163"
    assert task_id_of(7, "mbpp_") == "mbpp_7"


@pytest.mark.anyio
async def test_generic_jsonl_with_its_own_field_names():
    record = {"id": "p1", "question": "Square a number.", "answer_code": "def sq(x):\n    return x * x",
              "asserts": ["assert sq(3) == 9", "assert sq(-2) == 4"]}
    fields = JsonlFields(id="id", prompt="question", solution="answer_code", tests="asserts",
                         prefix="mine_")
    problem = jsonl_problem(record, fields)
    assert (problem.task_id, problem.entry_point, problem.call_check) == ("mine_p1", "sq", False)
    async with KernelPool(size=1) as pool:
        recording = await record_reference(problem, pool)
    assert (recording.asserts, recording.passed) == (2, 2)
    assert recording.calls == [[[3], {"dict": []}], [[-2], {"dict": []}]]  # args, kwargs


def test_tagged_json_keeps_types_apart():
    namespace: dict = {}
    exec(assert_harness.CODEC, namespace)
    encode, decode = namespace["_kx_encode"], namespace["_kx_decode"]
    values = [(1, [2, 3]), {"a": {1, 2}}, {(1, 2): b"x"}, 2**70, float("inf"), 1 + 2j,
              frozenset({"z"}), [True, None, 1.5, "s"]]
    for value in values:
        assert decode(json.loads(json.dumps(encode(value)))) == value
        assert type(decode(json.loads(json.dumps(encode(value))))) is type(value)
    assert encode((1,)) != encode([1])

    class Sneaky(int):
        def __eq__(self, other):
            return True

    with pytest.raises(TypeError):
        encode(Sneaky(3))  # only exact builtin types cross between kernels


def test_imported_tasks_validate(imported_library):
    run = subprocess.run(
        [sys.executable, "-m", "kernelenv", "tasks", "validate", "--library",
         str(imported_library), "--json"],
        capture_output=True, text=True, timeout=280,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(run.stdout)
    assert len(results) == 4
    for result in results:
        scores = {check["attempt"]: check["score"] for check in result["checks"]}
        assert scores["reference"] >= 0.95 and scores["empty"] <= 0.05, result


@pytest.mark.anyio
async def test_imported_notebooks_run_in_plain_jupyter_and_print_their_grade(
    imported_library, tmp_path
):
    for path in sorted(imported_library.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(notebook, timeout=60, resources={"metadata": {"path": str(tmp_path)}})
        await client.async_execute()
        printed = "".join(
            out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", [])
            if out.get("name") == "stdout"
        )
        assert re.findall(r"score: ([0-9.]+)", printed) == ["1.0000"], (path.name, printed)


def test_bad_task_file_names_the_file_and_the_cell(imported_library, tmp_path):
    notebook = nbformat.read(imported_library / "humaneval_0.ipynb", as_version=4)
    number, cell = next(
        (n, c) for n, c in enumerate(notebook.cells, 1) if c.metadata.get("tags") == ["solution"]
    )
    cell.source = "def add(a, b:\n    return a + b\n"
    nbformat.write(notebook, tmp_path / "humaneval_0.ipynb")
    run = subprocess.run(
        [sys.executable, "-m", "kernelenv", "tasks", "list", "--library", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2
    assert f"humaneval_0.ipynb: cell {number} (solution): not valid Python" in run.stderr
