"""The documentation pages as a whole: each is tested by one module, marks are known, few
blocks are skipped."""

from __future__ import annotations

from pages import GROUPS, MAX_SKIPPED

from doc_blocks import blocks_of, check_marks, docs_pages


def test_every_page_is_in_one_group():
    grouped = [page for pages in GROUPS.values() for page in pages]
    assert len(grouped) == len(set(grouped))
    # The API reference pages hold no code blocks of their own (mkdocstrings directives).
    assert set(grouped) == {p for p in docs_pages() if not p.startswith("docs/api/")}
    assert not blocks_of(*[p for p in docs_pages() if p.startswith("docs/api/")])


def test_marks_are_known_and_few_blocks_are_skipped():
    blocks = blocks_of(*docs_pages())
    assert len(blocks) >= 20
    check_marks(blocks)
    skipped = [b.id for b in blocks if b.mark("skip")]
    assert len(skipped) <= MAX_SKIPPED, skipped
