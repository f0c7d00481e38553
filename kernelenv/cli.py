"""The ``kernelenv`` command line: one subcommand per module, loaded only when used."""

from __future__ import annotations

import argparse
import importlib
import logging
import warnings
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

# subcommand -> (module, one-line help). Each module defines ``add_arguments(parser)`` and
# ``run(args) -> int``; a module serving several subcommands names them by suffix,
# ``add_arguments_<name>`` and ``run_<name>``.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("kernelenv.demo", "run a demo episode on local kernels"),
    "tasks": ("kernelenv.tasks.cli", "list, show and validate the graded task notebooks"),
    "eval": ("kernelenv.tasks.cli", "grade a file of completions, each in a fresh episode"),
    "serve": ("kernelenv.server.cli", "serve OpenEnv's WebSocket and HTTP protocol"),
    "bench": ("kernelenv.bench.command", "benchmark kernelenv beside its floor and its peers"),
    "replay": ("kernelenv.episodes.cli", "re-run a notebook in a fresh kernel, report divergences"),
    "recover": ("kernelenv.episodes.cli", "write the notebooks of episodes a dead server was running"),
    "journal": ("kernelenv.episodes.cli", "prune the episode journal (age, file count, bytes)"),
    "mcp": ("kernelenv.server.mcp_stdio", "serve the environment as an MCP server over stdio"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand's arguments."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="kernelenv", description="A Jupyter-kernel-backed execution environment for agents."
    )
    parser.add_argument("--version", action="version", version=f"kernelenv {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name, _name=name)
        _entry(importlib.import_module(module_name), "add_arguments", name)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The log line above already says it; a warning would print the same sentence again.
    from .sandbox.config import SandboxFallbackWarning

    warnings.filterwarnings("ignore", category=SandboxFallbackWarning)
    run = _entry(importlib.import_module(args._module), "run", args._name)
    return int(run(args) or 0)


def _entry(module: ModuleType, function: str, command: str) -> Callable[..., Any]:
    """``module.<function>_<command>`` where the module serves several commands, else ``<function>``."""
    return getattr(module, f"{function}_{command}", None) or getattr(module, function)
