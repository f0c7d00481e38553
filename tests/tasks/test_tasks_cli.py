"""``kernelenv tasks list | show | validate``, run as a user runs them (validate is CI's check)."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat

from kernelenv.cli import main
from kernelenv.tasks.library import SOURCE_TASKS


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelenv", "tasks", *args],
                          check=False, capture_output=True, text=True, timeout=timeout)


def test_validate_replays_every_task_in_the_library():
    """Reference >= 0.95, empty <= 0.05, wrong attempt strictly between, for all tasks."""
    proc = run_cli("validate", "--json", "--jobs", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == len(list(SOURCE_TASKS.glob("*.ipynb"))) >= 12
    for result in results:
        scores = {check["attempt"]: check["score"] for check in result["checks"]}
        assert result["ok"], result
        assert scores["reference"] >= 0.95 and scores["empty"] <= 0.05
        assert 0.05 < scores["wrong"] < 0.95
        if result["family"] != "pr_review":  # 1.0 where the scale allows it
            assert scores["reference"] == 1.0
        else:  # review rewards stay strictly inside (0, 1)
            assert 0.0 < scores["empty"] and scores["reference"] < 1.0


def test_validate_fails_on_a_task_whose_reference_is_wrong(tmp_path):
    notebook = nbformat.read(SOURCE_TASKS / "functions_easy_palindrome.ipynb", as_version=4)
    solution = next(c for c in notebook.cells if "solution" in c.metadata.get("tags", []))
    solution.source = "def is_palindrome(text):\n    return True\n"
    nbformat.write(notebook, tmp_path / "functions_easy_palindrome.ipynb")
    proc = run_cli("--dir", str(tmp_path), "validate")
    assert proc.returncode == 1
    assert "FAIL  functions_easy_palindrome" in proc.stdout
    assert "reference 0.800 FAIL (>= 0.95)" in proc.stdout  # 8 of 10 texts are palindromes
    assert "0/1 tasks valid" in proc.stdout


def test_list_and_show_never_reveal_hidden_cells(capsys):
    def cli(*args: str) -> str:
        assert main(["tasks", *args]) == 0
        return capsys.readouterr().out

    listing = json.loads(cli("list", "--json"))
    assert {row["family"] for row in listing} == {
        "pr_review", "functions", "data_analysis", "multi_step"
    }
    reviews = json.loads(cli("list", "--json", "--family", "pr_review"))
    assert [row["id"] for row in reviews] == ["task_easy_1", "task_medium_1", "task_hard_1"]
    shown = cli("show", "task_medium_1")
    assert "Review pull request #1317" in shown and "--- code_snippet ---" in shown
    assert "ReviewKey" not in shown and "SQL injection: the search" not in shown
    data = json.loads(cli("show", "functions_easy_palindrome", "--json"))
    assert set(data) == {"id", "version", "family", "difficulty", "title", "limits", "context",
                         "prompt"}
    assert "is_palindrome" in data["prompt"] and "kept[::-1]" not in json.dumps(data)


def test_unknown_task_is_a_clear_error():
    proc = run_cli("show", "task_easy_9")
    assert proc.returncode == 2
    assert "Did you mean 'task_easy_1'" in proc.stderr
