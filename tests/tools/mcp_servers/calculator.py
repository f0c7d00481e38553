"""A small real MCP server for the tests, built with the mcp SDK (1.x or 2.x): stdio or
streamable HTTP.

Usage: ``python calculator.py stdio`` or ``python calculator.py http PORT``.
"""

from __future__ import annotations

import os
import sys

try:
    from mcp.server.fastmcp import FastMCP
except ImportError:  # mcp 2.x renamed it; host and port moved to run()
    from mcp.server.mcpserver import MCPServer as FastMCP

SDK_2 = FastMCP.__name__ == "MCPServer"
if SDK_2:  # 2.x shows the model only the messages of its own ToolError
    from mcp.server.mcpserver.exceptions import ToolError as ExpectedError
else:
    ExpectedError = ValueError


def build(port: int = 8000) -> FastMCP:
    if SDK_2:
        server = FastMCP("calculator", log_level="WARNING")
    else:
        server = FastMCP("calculator", host="127.0.0.1", port=port, log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def shout(text: str, times: int = 1) -> str:
        """Upper-case a text, repeated."""
        return " ".join([text.upper()] * times)

    @server.tool(name="server-info")
    def server_info() -> dict[str, object]:
        """Where the server runs (proves calls run on the host, not in the kernel)."""
        return {"pid": os.getpid(), "transport": sys.argv[1]}

    @server.tool()
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        if b == 0:
            raise ExpectedError("cannot divide by zero")
        return a / b

    return server


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        build().run("stdio")
    elif SDK_2:
        build().run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        build(int(sys.argv[2])).run("streamable-http")
