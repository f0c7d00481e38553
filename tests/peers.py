"""Peers' virtual envs that ``make test`` builds before pytest starts (see scripts/venv.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def peer_python(name: str) -> Path:
    """The interpreter of ``.venv-NAME``, a peer's virtual env that ``make test`` builds.

    Installs happen in the Makefile, before pytest starts (scripts/venv.sh, from the pins in
    requirements/NAME.txt), never inside a test under its time limit.
    """
    python = REPO / f".venv-{name}" / "bin" / "python"
    if not python.exists():
        pytest.fail(f".venv-{name} is not built: run 'make test' (or 'make .venv-{name}/.locked')")
    return python
