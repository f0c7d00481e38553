"""The code blocks of the documentation pages of group "tools" (tests/docs/pages.py) run as
written (see tests/doc_blocks.py)."""

from __future__ import annotations

import pytest
from pages import GROUPS

from doc_blocks import blocks_of, run_block, server, workdir  # noqa: F401

pytestmark = pytest.mark.slow

BLOCKS = blocks_of(*GROUPS["tools"])


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block_runs(block, workdir, request):  # noqa: F811
    run_block(block, workdir, request)
