"""PR-review scoring (pure): rewards strictly inside (0, 1), partial credit per component."""

from __future__ import annotations

import pytest

from kernelenv.tasks.review import CEILING, FLOOR, WEIGHTS, ReviewKey, score_review

KEY = ReviewKey(
    file_path="services/user_search.py",
    line_number=12,
    issue_types=["security"],
    bug_type="security",
    severity="high",
    evidence=[["sql injection", "injection"], ["parameter", "placeholder"]],
)
PERFECT = {
    "review": "SQL injection through the f-string; use a bound parameter.",
    "file_path": "services/user_search.py",
    "issue_type": "security",
    "severity": "high",
    "bug_type": "security",
    "line_number": 12,
    "confidence": 1.0,
}


def score(**changes) -> float:
    return score_review({**PERFECT, **changes}, KEY)["score"]


def test_weights_sum_to_one():
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)


def test_perfect_and_blank_reviews_sit_strictly_inside_0_1():
    assert score() == CEILING < 1.0
    blank = score_review({}, KEY)
    assert blank["score"] == FLOOR > 0.0
    assert set(blank["components"]) == set(WEIGHTS)
    assert "flagged file" in blank["feedback"]


def test_each_component_gives_partial_credit():
    perfect = score()
    assert score(file_path="api/admin.py") < perfect  # wrong file loses line credit too
    assert score(file_path="api/admin.py") < score(line_number=40)
    assert score(issue_type="logic") < perfect
    assert score(bug_type="logic") < perfect
    assert score(severity="critical") > score(severity="low")  # one level off earns half
    assert score(severity="medium") == score(severity="critical")
    assert score(review="Looks risky.") < score(review="SQL injection here.") < perfect


def test_line_precision_fades_with_distance():
    near, off, far = score(line_number=13), score(line_number=16), score(line_number=40)
    assert near == score()  # within the tolerance
    assert score() > off > far


def test_file_path_forms_and_case_are_normalised():
    assert score(file_path="./services/user_search.py") == score()
    assert score(file_path="user_search.py") == score()
    assert score(issue_type="SECURITY", severity=" High ") == score()


def test_confidence_is_calibrated_against_correctness():
    wrong_but_sure = {**PERFECT, "issue_type": "logic", "bug_type": "none", "line_number": 30}
    sure = score_review({**wrong_but_sure, "confidence": 1.0}, KEY)
    humble = score_review({**wrong_but_sure, "confidence": 0.3}, KEY)
    assert humble["components"]["confidence"] > sure["components"]["confidence"]
    assert humble["score"] > sure["score"]


def test_secondary_issue_type_earns_half():
    key = KEY.model_copy(update={"issue_types": ["logic", "performance"]})
    full = score_review({**PERFECT, "issue_type": "logic"}, key)["components"]["issue_type"]
    half = score_review({**PERFECT, "issue_type": "performance"}, key)["components"]["issue_type"]
    assert (full, half) == (1.0, 0.5)
