"""The sandbox levels a test runs at, bwrap skipped (with why) where bubblewrap cannot run."""

from __future__ import annotations

import pytest

from kernelenv.sandbox.config import bwrap_problem

LEVELS = [
    "none",
    "limits",
    pytest.param(
        "bwrap", marks=pytest.mark.skipif(bwrap_problem() is not None, reason="no bubblewrap")
    ),
]
