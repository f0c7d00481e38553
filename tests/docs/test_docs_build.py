"""The documentation site builds with no warning (``mkdocs build --strict``, as ``make docs``
does): every page is in the navigation, every link and anchor resolves, and every docstring
the API reference renders parses."""

from __future__ import annotations

import os
import subprocess
import sys

from doc_blocks import REPO


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=280,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "WARNING" not in run.stderr, run.stderr
    built = tmp_path / "site"
    assert (built / "index.html").exists()
    assert (built / "scale" / "index.html").exists()
    # The API reference came from the docstrings.
    assert "acquire_timeout_s" in (built / "api" / "env" / "index.html").read_text()
