"""PR-review scoring (pure): rewards strictly inside (0, 1), partial credit per component."""

from __future__ import annotations

import pytest

from kernelenv import KernelPool
from kernelenv.tasks.format import review_answer
from kernelenv.tasks.grading import grade_answers
from kernelenv.tasks.library import default_library
from kernelenv.tasks.review import (
    CEILING,
    FLOOR,
    MAX_EVIDENCE_CHARS,
    WEIGHTS,
    ReviewKey,
    score_review,
)

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


# Every bug phrase of every shipped PR task's key, and then some: the review an agent would
# paste into every submission if evidence were a bare substring match.
STUFFED = (
    "Off-by-one: page - 1, 1-based, the first page is skipped and never returned, items "
    "missing. SQL injection through an f-string / format / concatenation; use a bind "
    "parameter or placeholder, escape input. Race condition between threads, concurrent "
    "reads see an empty or partial table (KeyError); take the lock, swap atomically, "
    "double-check. Also a null pointer, an integer overflow, a memory leak, a path traversal "
    "and an N+1 query."
)


def test_evidence_counts_only_at_the_defects_location():
    located = score_review(PERFECT, KEY)["components"]["evidence"]
    assert located == 1.0
    for elsewhere in ({"file_path": "api/admin.py"}, {"line_number": 40}, {"line_number": None}):
        components = score_review({**PERFECT, **elsewhere}, KEY)["components"]
        assert components["evidence"] == 0.0, elsewhere
    hunk = KEY.model_copy(update={"hunk": (8, 17)})
    assert score_review({**PERFECT, "line_number": 17}, hunk)["components"]["evidence"] == 1.0
    assert score_review({**PERFECT, "line_number": 18}, hunk)["components"]["evidence"] == 0.0


def test_a_keyword_stuffed_review_earns_no_evidence_even_at_the_right_place():
    stuffed = score_review({**PERFECT, "review": STUFFED}, KEY)
    assert stuffed["components"]["evidence"] == 0.0
    assert stuffed["score"] < score()
    # One secondary concern is still a review, not a list of guesses.
    honest = PERFECT["review"] + " The loop is also quadratic."
    assert score_review({**PERFECT, "review": honest}, KEY)["components"]["evidence"] == 1.0


def test_evidence_beyond_the_read_length_is_not_read():
    padded = "x" * MAX_EVIDENCE_CHARS + " " + PERFECT["review"]
    assert score_review({**PERFECT, "review": padded}, KEY)["components"]["evidence"] == 0.0


@pytest.fixture(scope="module")
async def pool(anyio_backend):
    async with KernelPool(size=1) as pool:
        yield pool


@pytest.mark.anyio
@pytest.mark.parametrize("task_id", ["task_easy_1", "task_medium_1", "task_hard_1"])
async def test_keyword_stuffing_earns_no_evidence_on_any_shipped_task(pool, task_id):
    """Graded by the task's own hidden grader, in kernels, as a submission is."""
    task = default_library().get(task_id)
    reference = review_answer(task.solution[0])
    honest, stuffed, stuffed_elsewhere = await grade_answers(pool, task, [
        reference,
        {**reference, "review": STUFFED},
        {**reference, "review": STUFFED, "file_path": "README.md", "line_number": 1},
    ])
    assert honest.components["evidence"] == 1.0
    assert stuffed.components["evidence"] == 0.0 and stuffed.score < honest.score
    assert stuffed_elsewhere.components["evidence"] == 0.0
    assert stuffed_elsewhere.score < stuffed.score
