"""`make demo` says what it installs while it installs (scripts/venv.sh through
scripts/pip-progress.sh) instead of a minute of silence."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# What pip (25) prints to stdout while it installs kernelenv into a fresh venv, abridged.
PIP_OUTPUT = """\
Obtaining file:///src/kernelenv
  Installing build dependencies: started
Collecting jupyter_client<9,>=8.6 (from kernelenv==0.1.0)
  Using cached jupyter_client-8.6.3-py3-none-any.whl.metadata (8.3 kB)
Collecting ipykernel<8,>=7 (from kernelenv==0.1.0)
  Using cached ipykernel-7.1.0-py3-none-any.whl.metadata (4.5 kB)
Installing collected packages: jupyter_client, ipykernel, kernelenv
Successfully installed ipykernel-7.1.0 jupyter_client-8.6.3 kernelenv-0.1.0
"""


def test_pip_progress_shows_a_line_per_package_and_the_count():
    run = subprocess.run(["bash", str(REPO / "scripts" / "pip-progress.sh")], input=PIP_OUTPUT,
                         capture_output=True, text=True, check=True)
    assert run.stdout.splitlines() == [
        "  jupyter_client<9,>=8.6", "  ipykernel<8,>=7", "  installed 3 packages",
    ]


def test_venv_sh_says_what_it_installs_and_from_which_pins():
    script = (REPO / "scripts" / "venv.sh").read_text()
    assert "at the versions pinned in $lock" in script
    # The pinned install is uv's, which lists what it installs; pip's (the newest allowed
    # releases) shows its progress through pip-progress.sh.
    assert "bash scripts/uv.sh pip install --python" in script
    assert script.count("| bash scripts/pip-progress.sh") == 1
