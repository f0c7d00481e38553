"""``kernelenv eval`` and ``evaluate()``: completions graded in fresh episodes on real kernels,
with the right verdict for right, wrong, crashing, hanging and forging completions."""

from __future__ import annotations

import json
import math

import anyio
import nbformat
import pytest

from kernelenv.cli import main
from kernelenv.errors import DatasetFormatError, UnknownTaskError
from kernelenv.tasks.evaluation import evaluate, pass_at_k, read_completions

FORGE = '''
class Always:
    def __eq__(self, other):
        return True

grade = {"score": 1.0, "feedback": "forged", "components": {}}
answer = {"results": [{"value": 3}] * 10}
print("score: 1.0000")

def add(a, b):
    return Always()
'''

# (task_id, completion, passed, score, status, a piece of the feedback)
CASES = [
    ("HumanEval/0", "    return a + b\n", True, 1.0, "ok", "4/4 hidden assertions passed"),
    ("HumanEval/0", "    return a - b\n", False, 0.25, "ok", "1/4 hidden assertions passed"),
    ("HumanEval/0", "import os\nos._exit(1)\n", False, 0.0, "kernel_died", "No function"),
    ("HumanEval/0", "import ctypes\nctypes.string_at(0)\n", False, 0.0, "kernel_died", ""),
    ("HumanEval/0", "while True:\n    pass\n", False, 0.0, "timeout", "No function named `add`"),
    ("HumanEval/0", "    while True:\n        pass\n", False, 0.0, "ok", "ran out of time"),
    ("HumanEval/0", FORGE, False, 0.0, "ok", "0/4 hidden assertions passed"),
    ("humaneval_1", "def doubled(xs):\n    return tuple(2 * x for x in xs)\n", True, 1.0, "ok",
     "5/5"),
    ("humaneval_1", "def doubled(xs):\n    return [2 * x for x in xs]\n", False, 0.0, "ok",
     "0/5"),  # a list is not the tuple the tests expect
    ("mbpp_12", "def min_max(xs):\n    return min(xs), max(xs)\n", True, 1.0, "ok", "3/3"),
    # HumanEval/0 again, by its library id: still one task for pass@k.
    ("humaneval_0", "    return b + a\n", True, 1.0, "ok", "4/4"),
    # The completion's own error, not only that nothing could be tested.
    ("humaneval_1", "def doubled(xs)\n    return xs\n", False, 0.0, "error",
     "the completion raised SyntaxError: "),
]


def test_eval_cli_gives_each_completion_its_verdict(imported_library, tmp_path, capsys):
    completions = tmp_path / "completions.jsonl"
    completions.write_text(
        "".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c, *_ in CASES)
    )
    out = tmp_path / "results.jsonl"
    code = main(["eval", "--library", str(imported_library), "--completions", str(completions),
                 "--out", str(out), "--workers", "2", "--json"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(len(CASES)))
    for row, (task_id, _, passed, score, status, feedback) in zip(rows, CASES, strict=True):
        assert row["task_id"] == task_id
        assert (row["passed"], row["score"], row["status"]) == (passed, score, status), row
        assert feedback in row["feedback"], row
        assert row["duration_s"] > 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["attempts"] == len(CASES) and summary["passed"] == 4
    assert summary["tasks"] == 3 and summary["pass_rate"] == pytest.approx(4 / 12)
    assert set(summary["pass_at_k"]) == {"pass@1"}  # one task has a single completion
    assert summary["statuses"] == {"ok": 8, "kernel_died": 2, "timeout": 1, "error": 1}
    assert {row["library_task_id"] for row in rows if row["task_id"] == "HumanEval/0"} == {
        "humaneval_0"}


@pytest.mark.anyio
async def test_evaluate_api_gives_pass_at_k_and_notebooks(imported_library, tmp_path):
    right = "def remove_Occ(s, ch):\n    i = s.find(ch)\n    s = s[:i] + s[i + 1:] if i >= 0 else s\n" \
            "    j = s.rfind(ch)\n    return s[:j] + s[j + 1:] if j >= 0 else s\n"
    wrong = "def remove_Occ(s, ch):\n    return s.replace(ch, '', 1)\n"
    items = [{"task_id": "mbpp_11", "completion": c} for c in (right, wrong, wrong)]
    items += [{"task_id": "humaneval_0", "completion": c} for c in ("  return a+b\n", "    return 0\n")]
    report = await evaluate(items, library=imported_library, workers=2,
                            notebooks=tmp_path / "notebooks")
    assert [r.passed for r in report.results] == [True, False, False, False, False]
    # "  return a+b" is indented by two spaces: an IndentationError after the starter code.
    assert report.results[3].status == "error"
    summary = report.summary
    expected_1 = (pass_at_k(3, 1, 1) + pass_at_k(2, 0, 1)) / 2
    expected_2 = (pass_at_k(3, 1, 2) + pass_at_k(2, 0, 2)) / 2
    assert summary.pass_at_k == {"pass@1": pytest.approx(expected_1),
                                 "pass@2": pytest.approx(expected_2)}
    assert summary.attempts_per_s > 0
    notebook = nbformat.read(report.results[0].notebook, as_version=4)
    assert notebook.metadata.kernelenv["task_id"] == "mbpp_11"
    assert any("rfind" in "".join(cell.source) for cell in notebook.cells)


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    assert pass_at_k(5, 4, 2) == 1.0 and pass_at_k(3, 0, 2) == 0.0


def test_bad_completions_files_are_refused(imported_library, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "mbpp_11"}\n')
    with pytest.raises(DatasetFormatError, match=r"bad.jsonl:1: needs a 'task_id' and a 'completion'"):
        read_completions(bad)
    with pytest.raises(UnknownTaskError, match="mbpp_13"):
        anyio.run(lambda: evaluate([{"task_id": "mbpp_13", "completion": ""}],
                                   library=imported_library))


def test_only_the_named_tasks_are_read(imported_library, tmp_path):
    import shutil

    from kernelenv.tasks.library import TaskLibrary

    library_dir = tmp_path / "library"
    shutil.copytree(imported_library, library_dir)
    # A notebook nobody names is not read: a broken one does not stop the evaluation.
    (library_dir / "broken.ipynb").write_text("{ not a notebook")
    library = TaskLibrary(library_dir)
    tasks = library.resolve(["HumanEval/0", "mbpp_12", "humaneval_0"])
    assert [t.id for t in tasks] == ["humaneval_0", "mbpp_12", "humaneval_0"]
    assert tasks[0] is tasks[2]  # read once
    # A name is looked up, never opened as a path.
    outside = tmp_path / "outside.ipynb"
    shutil.copy(library_dir / "mbpp_12.ipynb", outside)
    for name in ("../outside", str(outside.with_suffix("")), "broken/../mbpp_12"):
        with pytest.raises(UnknownTaskError):
            library.resolve([name])
    rows = anyio.run(lambda: evaluate(
        [{"task_id": "mbpp_12", "completion": "def min_max(xs):\n    return min(xs), max(xs)\n"}],
        library=library,
    ))
    assert rows.summary.passed == 1
