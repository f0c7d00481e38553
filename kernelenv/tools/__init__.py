"""Host-side tools for agent code: the registry (tools and MCP servers), the bridge that makes
them callable from a kernel, file tools, and the connection to external MCP servers."""

from ..errors import ToolError
from .registry import MCPServer, Tool, ToolCall, ToolContext, ToolRegistry

__all__ = ["MCPServer", "Tool", "ToolCall", "ToolContext", "ToolError", "ToolRegistry"]
