"""A Python started through a path with ``..`` in it (``../.venv/bin/python x.py``) runs
bwrap kernels: the interpreter's path is normalised (abspath, so it stays the venv's), since
inside the sandbox only what the path names is bound, not the folders ``..`` passes through."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from kernelenv.sandbox.config import bwrap_available
from script_runner import run_script

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable here"),
]

SCRIPT = textwrap.dedent("""
    import sys
    from kernelenv import KernelEnv

    assert ".." in sys.executable, sys.executable
    with KernelEnv(sandbox="bwrap", pool_size=0).sync() as env:
        env.reset()
        print(env.step("6 * 7").return_value)
""")


def test_bwrap_kernels_start_under_a_python_reached_through_dotdot(tmp_path):
    # Relative, as a reader types it: Python makes sys.executable cwd + the path as given.
    dotdot = Path(os.path.relpath(sys.executable, tmp_path))
    assert dotdot.parts[0] == ".."
    run = run_script(SCRIPT, tmp_path, python=dotdot)
    run.assert_clean()
    assert run.stdout.strip() == "42", run.stdout + run.stderr

