"""`kernelenv bench --quick` runs every case and writes every row; figures are never asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from kernelenv.bench import report
from kernelenv.bench.stats import Check, Figures, Results, Row
from kernelenv.bench.suite import ROWS

pytestmark = pytest.mark.slow

# The quick run: measured once per module, then inspected by the tests below.
QUICK_TIMEOUT_S = 280


def processes_using(path: Path) -> list[psutil.Process]:
    """Live processes whose command line or TMPDIR names ``path`` (what the bench started)."""
    found = []
    for proc in psutil.process_iter():
        try:
            named = str(path) in " ".join(proc.cmdline())
            if (named or proc.environ().get("TMPDIR") == str(path)) and (
                proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Iterator[tuple[subprocess.CompletedProcess, Path, list, list]]:
    """Runs the quick benchmark as a user would; returns its process, output and leftovers.

    The run gets a TMPDIR of its own, so every kernel, server and pool directory it starts
    can be found afterwards, even though they are not this process's children. A short one,
    as a user's: forks' IPC socket paths under it must fit in 107 bytes.
    """
    base = tmp_path_factory.mktemp("bench")
    tmpdir = Path(tempfile.mkdtemp(prefix="kb-"))
    out = base / "results" / "latest.md"
    proc = subprocess.run(
        [sys.executable, "-m", "kernelenv", "bench", "--quick", "--output", str(out)],
        check=False, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S,
        env={**os.environ, "TMPDIR": str(tmpdir)},
    )
    deadline = time.monotonic() + 10
    while (left := processes_using(tmpdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for process in left:  # never leave them to the next test, even when failing
        process.kill()
    dirs_left = [d.name for d in tmpdir.glob("kernelenv-*")]
    yield proc, out, left, dirs_left
    shutil.rmtree(tmpdir, ignore_errors=True)


def test_quick_mode_completes_and_cleans_up(quick_run):
    proc, out, processes_left, dirs_left = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.exists() and out.with_suffix(".json").exists()
    assert not processes_left, [p.pid for p in processes_left]
    assert not dirs_left
    assert "NOT MET" not in proc.stdout  # a few samples judge no target


def test_every_row_is_measured(quick_run):
    _, out, _, _ = quick_run
    data = json.loads(out.with_suffix(".json").read_text())
    rows = {row["key"]: row for row in data["rows"]}
    assert set(rows) == set(ROWS)
    for key, row in rows.items():
        assert row["skipped"] is None, f"{key}: {row['skipped']}"
        figures = row["figures"]
        assert figures["n"] >= 1 and figures["p10"] <= figures["p50"] <= figures["p90"] > 0, key
    assert data["mode"] == "quick"


def test_load_test_and_targets_are_reported(quick_run):
    _, out, _, _ = quick_run
    data = json.loads(out.with_suffix(".json").read_text())
    contenders = [run["contender"] for run in data["load"]]
    assert contenders == [
        "kernelenv over the WebSocket",
        "kernelenv over the WebSocket, journal with fsync",
        "raw jupyter_client, same number of kernels",
    ]
    for run in data["load"]:
        # Errors and cross-talk are correctness, not timing: every session saw only itself.
        assert run["errors"] == 0 and run["cross_talk"] == 0, run["error_examples"]
        assert run["sessions"] * run["steps_per_session"] == run["latency"]["n"]
    checks = {check["key"]: check for check in data["checks"]}
    assert set(checks) == {
        "step.ratio", "step.websocket_overhead", "step.websocket_fsync_overhead",
        "step.websocket_no_journal_overhead", "step.websocket_cpu", "step.websocket_fsync_cpu",
        "step.websocket_no_journal_cpu",
        "compute.speedup", "reset.warm_p50",
        "reset.warm_p99", "reset.drained_p99", "replay.speedup", "memory.uss", "load.errors",
        "load.cross_talk", "load.throughput", "load.throughput_fsync",
        "fresh.p50", "fresh.cpu", "codeeval.throughput", "fork.one",
        "grading.eval_ratio", "grading.grade_p50", "grading.throwaway_p50",
    }
    assert all(check["value"] is not None for check in checks.values())


def test_markdown_has_every_row_target_and_the_machine(quick_run):
    _, out, _, _ = quick_run
    text = out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    for name, _unit in ROWS.values():
        assert name in text
    for check in data["checks"]:
        assert check["what"] in text and check["target"] in text
    for heading in ("## Targets", "## Figures", "## Load test", "## Machine"):
        assert heading in text
    assert data["machine"]["cpu_model"] in text
    assert "smolagents (own venv)" in data["machine"]["packages"]
    # Results are committed: no path of this machine in them.
    checkout = Path(__file__).resolve().parents[2]
    assert str(checkout) not in text and str(Path.home()) not in text


def test_report_marks_unmeasured_rows_and_unmet_targets(tmp_path):
    """The page says plainly when a row is missing or a target is missed (pure: no kernels)."""
    results = Results("t", "full", {"packages": {}})
    results.rows.append(Row("step.raw", "trivial step", "raw", "ms", Figures.of([0.005], 1000)))
    results.rows.append(Row("step.websocket", "trivial step", "ws", "ms", skipped="no server"))
    results.checks.append(Check("step.ratio", "ratio", 1.3, "x", "<= 1.15x", False))
    results.checks.append(Check("load.errors", "errors", None, "", "0", None))
    markdown, json_path = report.write(results, tmp_path / "r.md")
    text = markdown.read_text()
    assert "not measured: no server" in text
    assert "| ratio | 1.30 x | <= 1.15x | **no** |" in text
    assert "| errors | – | 0 | not measured |" in text
    assert json.loads(json_path.read_text())["rows"][0]["figures"]["p50"] == pytest.approx(5.0)

    # A quick run has too few samples to judge a target by.
    results.mode = "quick"
    text = report.write(results, tmp_path / "q.md")[0].read_text()
    assert "| ratio | 1.30 x | <= 1.15x | not judged in quick mode |" in text
    assert "**no**" not in text


def test_percentiles_stay_in_order_when_samples_are_equal():
    """Interpolating between equal samples rounds: 3 x 120.00000000000001 gave p10 above p50."""
    for samples in ([0.12000000000000001] * 3, [0.12, 0.12000000000000001, 0.5], [0.2] * 40):
        f = Figures.of(samples, scale=1000)
        assert f.p10 <= f.p50 <= f.p90 <= f.p99, (samples, f)
        assert min(samples) * 1000 <= f.p10 and f.p99 <= max(samples) * 1000
