"""Scoring of PR-review submissions against a task's hidden answer key (pure, no I/O).

Partial credit, as in the PR-review benchmark the tasks come from: file localisation, issue
and bug type, severity calibration, line precision, evidence quality in the review text, and
confidence calibration. The reward is
mapped strictly inside (0, 1): a blank review gets ``FLOOR``, a perfect one ``CEILING``.

Evidence counts only for a finding at the defect's location (the right file, a line in the
defect's hunk), and only from a review that argues for one defect: a text naming several
kinds of defect the key does not expect (a list of bug phrases pasted into every review)
earns no evidence credit.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FLOOR = 0.01
CEILING = 0.99
SEVERITIES = ("low", "medium", "high", "critical")

# Component weights; they sum to 1.
WEIGHTS = {
    "file": 0.25,
    "issue_type": 0.10,
    "bug_type": 0.10,
    "severity": 0.15,
    "line": 0.20,
    "evidence": 0.15,
    "confidence": 0.05,
}
# The components a finding's confidence is calibrated against.
_CORE = ("file", "issue_type", "bug_type", "severity", "line", "evidence")

# Only this much of a review's text is read for evidence: a longer text is no better evidence.
MAX_EVIDENCE_CHARS = 2000
# Lines around the defect's line that count as its location when a key gives no hunk.
DEFAULT_HUNK_MARGIN = 5
# Phrases that name a kind of defect. A review may mention one kind its key does not expect
# (a secondary concern); naming more is guessing, not evidence.
DEFECT_KINDS = {
    "off-by-one": ("off-by-one", "off by one", "fencepost"),
    "injection": ("sql injection", "injection", "unsanitized", "unsanitised", "xss",
                  "cross-site scripting"),
    "concurrency": ("race condition", "data race", "deadlock", "thread-safe", "thread safety",
                    "not atomic"),
    "null": ("null pointer", "null dereference", "none check", "nonetype"),
    "overflow": ("overflow", "underflow"),
    "leak": ("memory leak", "resource leak", "file handle leak"),
    "performance": ("n+1", "quadratic", "o(n^2)", "thundering herd"),
    "access control": ("authentication bypass", "privilege escalation", "idor",
                       "missing authorization"),
    "secrets": ("hardcoded secret", "hard-coded secret", "plaintext password", "weak hash"),
    "path traversal": ("path traversal", "directory traversal"),
    "deserialization": ("insecure deserialization", "pickle.load", "yaml.load"),
}
MAX_FOREIGN_KINDS = 1


class ReviewKey(BaseModel):
    """The hidden answer key of a pr_review task."""

    model_config = ConfigDict(extra="forbid")

    file_path: str = Field(description="The file holding the defect.")
    line_number: int = Field(description="The defect's line in the file after the change.")
    issue_types: list[str] = Field(description="Accepted issue types (first is the main one).")
    bug_type: str = Field(description="The defect's bug type.")
    severity: str = Field(description="The calibrated severity.")
    evidence: list[list[str]] = Field(
        description="Evidence the review text should give: each inner list is one point, "
        "matched by any of its phrases (case-insensitive)."
    )
    line_tolerance: int = Field(default=1, ge=0, description="Lines off still counted exact.")
    hunk: tuple[int, int] | None = Field(
        default=None,
        description="First and last line (in the file after the change) of the code holding "
        "the defect: evidence counts only for a finding there. Default: the defect's line "
        f"plus or minus line_tolerance + {DEFAULT_HUNK_MARGIN}.",
    )

    def located(self, line_number: int | None) -> bool:
        """Whether a finding at ``line_number`` (on the right file) is at the defect."""
        if line_number is None:
            return False
        margin = self.line_tolerance + DEFAULT_HUNK_MARGIN
        first, last = self.hunk or (self.line_number - margin, self.line_number + margin)
        return first <= line_number <= last

    def expected_kinds(self) -> set[str]:
        """The kinds of :data:`DEFECT_KINDS` the key's own evidence phrases speak of."""
        phrases = [p.lower() for point in self.evidence for p in point]
        return {
            kind
            for kind, names in DEFECT_KINDS.items()
            if any(a in b or b in a for a in names for b in phrases)
        }


def _norm(text: str | None) -> str:
    return (text or "").strip().lower()


def _file_matches(given: str, expected: str) -> bool:
    given = _norm(given).lstrip("./").replace("\\", "/")
    expected = _norm(expected)
    return bool(given) and (given == expected or expected.endswith("/" + given))


def _line_credit(given: int | None, key: ReviewKey) -> float:
    if given is None:
        return 0.0
    distance = abs(given - key.line_number)
    if distance <= key.line_tolerance:
        return 1.0
    # Fades to nothing ten lines past the tolerance.
    return max(0.0, 1.0 - (distance - key.line_tolerance) / 10.0)


def foreign_kinds(text: str, key: ReviewKey) -> set[str]:
    """Kinds of defect the review text names that the key does not expect."""
    named = {kind for kind, names in DEFECT_KINDS.items() if any(n in text for n in names)}
    return named - key.expected_kinds()


def _evidence_credit(text: str, key: ReviewKey, located: bool) -> float:
    if not located or len(foreign_kinds(text, key)) > MAX_FOREIGN_KINDS:
        return 0.0
    if not key.evidence:
        return 1.0
    text = text[:MAX_EVIDENCE_CHARS]
    found = sum(any(p.lower() in text for p in point) for point in key.evidence)
    return found / len(key.evidence)


def _severity_credit(given: str, expected: str) -> float:
    if _norm(given) not in SEVERITIES:
        return 0.0
    distance = abs(SEVERITIES.index(_norm(given)) - SEVERITIES.index(expected))
    return {0: 1.0, 1: 0.5}.get(distance, 0.0)


def score_review(submission: dict[str, Any], key: ReviewKey) -> dict[str, Any]:
    """Score a submission (ReviewAction fields) against the key.

    Returns:
        A grade dict: ``score`` strictly inside (0, 1), ``components`` (each in [0, 1]) and
        ``feedback`` (what was right and wrong, without revealing the key).
    """
    on_file = _file_matches(submission.get("file_path", ""), key.file_path)
    line_number = submission.get("line_number")
    located = on_file and isinstance(line_number, int) and key.located(line_number)
    text = _norm(submission.get("review"))
    issue = _norm(submission.get("issue_type"))
    components = {
        "file": 1.0 if on_file else 0.0,
        "issue_type": (
            1.0 if issue == key.issue_types[0] else 0.5 if issue in key.issue_types else 0.0
        ),
        "bug_type": 1.0 if _norm(submission.get("bug_type")) == key.bug_type else 0.0,
        "severity": _severity_credit(submission.get("severity", ""), key.severity),
        "line": _line_credit(submission.get("line_number"), key) if on_file else 0.0,
        "evidence": _evidence_credit(text, key, located),
    }
    correctness = sum(WEIGHTS[c] * components[c] for c in _CORE) / sum(WEIGHTS[c] for c in _CORE)
    confidence = float(submission.get("confidence", 0.5))
    # Calibration only counts for a finding on the right file: a blank review earns nothing.
    components["confidence"] = 1.0 - (confidence - correctness) ** 2 if on_file else 0.0
    raw = sum(WEIGHTS[name] * value for name, value in components.items())
    score = round(FLOOR + (CEILING - FLOOR) * raw, 4)
    return {
        "score": score,
        "components": {name: round(value, 4) for name, value in components.items()},
        "feedback": _feedback(components),
    }


_ADVICE = {
    "file": "the flagged file is not where the defect is",
    "issue_type": "the issue type is off",
    "bug_type": "the bug type is off",
    "severity": "the severity is miscalibrated",
    "line": "the line number is imprecise",
    "evidence": "the review text misses evidence for the defect (evidence counts for a "
    "finding at the defect's location, in a review that argues for one defect)",
    "confidence": "the confidence does not match how right the finding is",
}


def _feedback(components: dict[str, float]) -> str:
    good = [name for name, value in components.items() if value >= 0.999]
    weak = [_ADVICE[name] for name, value in components.items() if value < 0.999]
    parts = []
    if good:
        parts.append("Correct: " + ", ".join(good) + ".")
    if weak:
        parts.append("To improve: " + "; ".join(weak) + ".")
    return " ".join(parts)
