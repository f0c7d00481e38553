"""The kernelspec every kernelenv kernel is started from, with settings that suit agents.

Writing a real kernelspec (rather than passing an argv around) means every tool that starts
kernels from it (episodes, grading, replay, nbclient) starts the same kind of kernel.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .config import PROVISIONER_NAME, SandboxConfig
from .template_provisioner import TEMPLATE_PROVISIONER_NAME, ensure_registered, template_problem

KERNEL_NAME = "kernelenv"

# Runs in the kernel process before ipykernel starts. Blocking debugpy's eager import saves
# about a quarter of a kernel's start-up CPU; agents have no use for a debugger.
BOOT_CODE = (
    "import sys; sys.modules['debugpy'] = None; "
    "from ipykernel.kernelapp import launch_new_instance; launch_new_instance()"
)

AGENT_KERNEL_ARGS = (
    "--InteractiveShell.colors=nocolor",  # tracebacks without ANSI codes
    "--HistoryManager.hist_file=:memory:",  # no sqlite history file, no lock contention
    "--IPKernelApp.quiet=True",
)

AGENT_KERNEL_ENV = {
    # Images come back as display_data (PNG), no GUI is ever opened.
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    # Stable traceback file names, so replays compare equal across execution counts.
    "IPYKERNEL_CELL_NAME": "<cell>",
    "PYTHONDONTWRITEBYTECODE": "1",
    "NO_COLOR": "1",
    "TERM": "dumb",
}


def kernel_spec(
    *,
    python: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    display_name: str = "Python 3 (kernelenv)",
    sandbox: SandboxConfig | None = None,
    hidden_paths: Sequence[str] = (),
    template_socket: str | None = None,
    template_root: str | None = None,
) -> dict:
    """The kernel.json dict for an agent kernel run by ``python`` (default: this interpreter).

    Args:
        python: The kernel's interpreter.
        extra_env: Variables added to the kernel's environment.
        display_name: The name tools show for the kernel.
        sandbox: Containment (its level resolved, see :meth:`SandboxConfig.resolved`);
            None or level ``none`` starts the kernel uncontained.
        hidden_paths: Directories a bwrap kernel sees empty (a pool's root: the neighbours).
        template_socket: A template process's socket (see :mod:`kernelenv.runtime.template`):
            kernels are forked from it; ``argv`` stays the cold launch, used when the
            template is not running.
        template_root: The pool's directory, the host files a bwrap template sees.
    """
    spec = {
        "argv": [os.path.abspath(python or sys.executable), "-c", BOOT_CODE, "-f", "{connection_file}"]
        + list(AGENT_KERNEL_ARGS),
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "env": {**AGENT_KERNEL_ENV, **(extra_env or {})},
        "metadata": {"debugger": False},
    }
    config = sandbox or SandboxConfig(level="none")
    if template_socket is not None and template_problem(config) is None:
        ensure_registered()
        spec["metadata"]["kernel_provisioner"] = {
            "provisioner_name": TEMPLATE_PROVISIONER_NAME,
            "config": {
                "sandbox": config.model_dump(mode="json"),
                "hidden_paths": [str(p) for p in hidden_paths],
                "template_socket": str(template_socket),
                "template_root": str(template_root or ""),
            },
        }
        if config.level == "bwrap":  # a cold fallback's signal would hit bubblewrap
            spec["interrupt_mode"] = "message"
    elif sandbox is not None and sandbox.level != "none":
        spec["metadata"]["kernel_provisioner"] = {
            "provisioner_name": PROVISIONER_NAME,
            "config": {
                "sandbox": sandbox.model_dump(mode="json"),
                "hidden_paths": [str(p) for p in hidden_paths],
            },
        }
        if sandbox.level == "bwrap":
            # A signal would hit bubblewrap, not the kernel: interrupt with a message.
            spec["interrupt_mode"] = "message"
    return spec


def write_kernel_spec(kernels_dir: Path, spec: dict, name: str = KERNEL_NAME) -> Path:
    """Write ``spec`` as ``kernels_dir/name/kernel.json`` and return the spec's directory.

    ``kernels_dir`` is what a ``KernelSpecManager(kernel_dirs=[...])`` (or ``JUPYTER_PATH``'s
    ``kernels`` folder) looks in.
    """
    spec_dir = Path(kernels_dir) / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return spec_dir
