"""``kernelenv mcp``: the environment as an MCP server over stdio, built on the shared tool table.

An MCP client (Claude Desktop, an agent framework, the ``mcp`` SDK's own client) starts
``kernelenv mcp`` and gets the tools of :data:`kernelenv.server.mcp_tools.TOOLS` — the same ones the
HTTP server answers on ``POST /mcp`` — on one episode of its own. The first call that needs an
episode starts one; ``reset`` starts a fresh one.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``kernelenv mcp`` options."""
    parser.add_argument(
        "--sandbox",
        default=None,
        help="containment of the kernels: auto (default), bwrap, limits or none",
    )
    parser.add_argument(
        "--step-timeout", type=float, default=30.0, metavar="S", help="default step budget"
    )


def run(args: argparse.Namespace) -> int:
    """Serve MCP on stdin/stdout until the client closes the connection."""
    import anyio

    try:
        import mcp  # noqa: F401
    except ImportError:
        print("kernelenv mcp needs the mcp SDK: pip install 'kernelenv[mcp]'", file=sys.stderr)
        return 2
    anyio.run(serve_stdio, {"sandbox": args.sandbox, "step_timeout_s": args.step_timeout})
    return 0


async def serve_stdio(env_options: dict[str, Any]) -> None:
    """Run the MCP server on this process's stdio with one env made from ``env_options``."""
    from mcp.server.stdio import stdio_server

    from ..env import KernelEnv

    async with KernelEnv(**env_options) as env:
        server = build_server(env)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


def build_server(env: Any) -> Any:
    """A low-level ``mcp`` server (SDK 1.x or 2.x) whose tools are the table's, run on ``env``."""
    from .. import __version__
    from ..tools.mcp_sdk import lowlevel_server
    from .mcp_tools import TOOLS, find_tool, result_text

    async def call_tool(name: str, arguments: dict[str, Any]) -> tuple[str, Any, bool]:
        tool = find_tool(name)
        if tool is None or tool.server_only:
            raise ValueError(f"unknown tool {name!r}; known tools: {[t['name'] for t in listing]}")
        if env.episode is None and not tool.starts_episode:
            await env.reset()
        # Errors raised here become results with isError set, as MCP asks.
        result = await tool.handler(env, arguments)
        return result_text(result), result, False

    listing = [
        {"name": t.name, "description": t.description, "inputSchema": t.input_schema}
        for t in TOOLS
        if not t.server_only  # one episode here: tools that address others by id are left out
    ]
    return lowlevel_server("kernelenv", __version__, listing, call_tool)
