"""Every code block of the README runs as written, each as a script of its own.

How blocks run and the marks that change it (``<!-- readme-test: server -->``, ``notebook``,
``file NAME``, ``venv NAME``, ``run``, ``skip (why)``): see doc_blocks.py. The pages of the
documentation site are tested the same way, by tests/docs/.
"""

from __future__ import annotations

import pytest

from doc_blocks import REPO, blocks_of, check_marks, run_block, server, workdir  # noqa: F401

pytestmark = pytest.mark.slow

BLOCKS = blocks_of("README.md")
# At most this many blocks may be skipped: a README whose examples are not run is not tested.
MAX_SKIPPED = 0
# The README is read in ten minutes; the rest is in docs/.
MAX_LINES = 400


def test_the_readme_is_short_has_blocks_and_none_is_skipped():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= MAX_LINES
    assert len(BLOCKS) >= 5
    check_marks(BLOCKS)
    assert len([b for b in BLOCKS if b.mark("skip")]) <= MAX_SKIPPED


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block, workdir, request):  # noqa: F811
    run_block(block, workdir, request)
