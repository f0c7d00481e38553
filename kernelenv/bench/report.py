"""Benchmark results as a Markdown page and a JSON file, to read and to compare between commits."""

from __future__ import annotations

import json
from pathlib import Path

from .stats import Figures, Results


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)  # a count
    digits = 1 if abs(value) >= 100 or unit == "MiB" else 2
    return f"{value:.{digits}f}{(' ' + unit) if unit else ''}"


def _verdict(met: bool | None, mode: str) -> str:
    if mode == "quick" and met is not None:
        return "not judged in quick mode"  # a few samples say nothing about a target
    return {True: "yes", False: "**no**", None: "not measured"}[met]


def _figures_cells(figures: Figures | None, unit: str) -> list[str]:
    if figures is None:
        return ["–", "–", "–", "–"]
    return [_num(figures.p50, unit), f"{_num(figures.p10)} – {_num(figures.p90)}",
            _num(figures.p99), str(figures.n)]


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    return out


def to_markdown(results: Results) -> str:
    """The results as a Markdown page: targets, figures, load test, machine, notes."""
    machine = results.machine
    lines = [f"# {results.title}", ""]
    lines += [
        (
            f"Taken {machine.get('date_utc')} on {machine.get('logical_cores')} logical cores "
            f"({machine.get('cpu_model')}), {machine.get('memory_gib')} GiB, "
            f"Python {machine.get('python')}; mode **{results.mode}**. Medians in the unit "
            "shown; contenders alternate within one run, so compare ratios inside a run."
        ),
        "",
        "## Targets",
        "",
    ]
    lines += _table(
        ["target", "measured", "wanted", "met"],
        [
            [c.what, _num(c.value, c.unit), c.target, _verdict(c.met, results.mode)]
            for c in results.checks
        ],
    )
    lines += ["", "## Figures", ""]
    rows = []
    for row in results.rows:
        note = row.note if row.figures is not None else f"not measured: {row.skipped}"
        rows.append([row.group, row.contender, *_figures_cells(row.figures, row.unit), note])
    lines += _table(["case", "contender", "p50", "p10 – p90", "p99", "n", "note"], rows)
    if results.load:
        lines += ["", "## Load test", ""]
        lines += _table(
            ["contender", "sessions × steps", "errors", "cross-talk", "throughput (steps/s)",
             "step latency p50 (ms)", "p10 – p90", "p99"],
            [[run.contender, f"{run.sessions} × {run.steps_per_session}", str(run.errors),
              str(run.cross_talk), _num(run.throughput_steps_s),
              *_figures_cells(run.latency, "")[:3]] for run in results.load],
        )
    lines += ["", "## Machine", ""]
    packages = ", ".join(f"{name} {v}" for name, v in machine.get("packages", {}).items())
    lines += _table(["", ""], [
        ["CPU", (f"{machine.get('cpu_model')}, {machine.get('logical_cores')} logical / "
                 f"{machine.get('physical_cores')} physical cores")],
        ["memory", f"{machine.get('memory_gib')} GiB"],
        ["OS", str(machine.get("os"))],
        ["Python", str(machine.get("python"))],
        ["packages", packages],
        ["commit", str(machine.get("git_commit") or "unknown")],
        ["load average (1 min) at start", str(machine.get("load_average_1m_at_start"))],
        ["command", f"`{machine.get('command')}`"],
    ])
    if results.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in results.notes]
    return "\n".join(lines) + "\n"


def write(results: Results, markdown_path: Path) -> tuple[Path, Path]:
    """Write ``markdown_path`` and the JSON beside it (same name, ``.json``); return both."""
    markdown_path = Path(markdown_path)
    json_path = markdown_path.with_suffix(".json")
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(to_markdown(results))
    json_path.write_text(json.dumps(results.to_json(), indent=1) + "\n")
    return markdown_path, json_path
