"""The bridge that lets agent code call host-side tools: a Unix socket per kernel, stubs inside.

Why a Unix socket in the kernel's ``run/`` directory rather than Jupyter's stdin channel: the
``run/`` directory already holds the kernel's IPC sockets, so every containment level keeps it
reachable (a network namespace does not isolate path-bound Unix sockets), while the stdin
channel would need ``allow_stdin=True`` on every step (then an agent's own ``input()`` would
block instead of failing at once) and a third socket to read in the step's hot loop. The
socket also serves calls from the agent's threads, between steps, and in parallel.

Wire format, one request per connection: the stub sends one JSON line
``{"tool": name, "args": [...], "kwargs": {...}}`` and reads one JSON line back:
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_type": "...", "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from ..errors import ToolError, ToolSetupError
from ..runtime.sizes import held_bytes
from .registry import Tool, ToolCall, ToolContext, ToolRegistry

if TYPE_CHECKING:
    from ..runtime.kernel import Kernel
    from .mcp import MCPConnection

log = logging.getLogger(__name__)

SOCKET_NAME = "tools.sock"
FILES_DIR_NAME = "tool-files"
# Largest request or reply line (a file's content travels in one).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Tool calls served at once per kernel; more connections get an error reply at once, so agent
# code cannot pin MAX_MESSAGE_BYTES of host memory per connection without bound.
MAX_CONCURRENT_CALLS = 8
# How long a connection may take to send its request line (the stub sends it at once).
REQUEST_LINE_TIMEOUT_S = 30.0
# A recorded result longer than this (as JSON) is kept as a preview only.
RECORDED_RESULT_CHARS = 4096
# Calls recorded a step (each at most a few preview-sized pieces); later ones are counted only.
MAX_RECORDED_CALLS = 1000
# Unix socket paths are limited to 108 bytes by the kernel's sockaddr_un.
MAX_SOCKET_PATH = 107


class ToolBridge:
    """An env's tools at run time: its MCP connections and the socket of its current kernel.

    Args:
        registry: The tools to offer.
    """

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry
        self.tools: dict[str, Tool] = {tool.name: tool for tool in registry}
        self._connections: list[MCPConnection] = []
        self._opened = False
        self._server: asyncio.Server | None = None
        self._context: ToolContext | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._calls: list[ToolCall] = []
        self._calls_dropped = 0
        self._attached_tools: dict[str, Tool] = {}

    async def open(self) -> None:
        """Connect the registry's MCP servers and add their tools (once)."""
        if self._opened or not self.registry.mcp_servers:
            return
        from .mcp import MCPConnection

        try:
            for server in self.registry.mcp_servers:
                connection = await MCPConnection.open(server)
                self._connections.append(connection)
                for tool in connection.tools:
                    if tool.name in self.tools:
                        raise ValueError(
                            f"MCP server {server.name!r} offers a tool named {tool.name!r}, "
                            "which is already registered; give the server a prefix=..."
                        )
                    self.tools[tool.name] = tool
        except BaseException:
            # All or nothing: the next reset tries again from scratch.
            await self.aclose()
            self.tools = {tool.name: tool for tool in self.registry}
            raise
        self._opened = True

    async def attach(
        self,
        kernel: Kernel,
        episode_id: str,
        timeout_s: float = 30.0,
        *,
        extra_tools: Sequence[Tool] = (),
        exceptions: Mapping[str, type[BaseException]] | None = None,
    ) -> None:
        """Serve ``kernel``'s tool socket and define the tool stubs in its namespace.

        Args:
            kernel: A kernel on this machine.
            episode_id: Given to tools in their :class:`ToolContext`.
            timeout_s: Budget of the cell that defines the stubs.
            extra_tools: Tools of this kernel only, besides the registry's (a task's service).
            exceptions: Exception classes defined in the kernel too: a tool raising one of
                them (by name) raises the kernel's class of that name in agent code.

        Raises:
            ToolSetupError: the kernel is not local, the socket path is too long, a name is
                offered twice, or the stubs could not be defined.
        """
        self.detach()
        clashes = sorted({tool.name for tool in extra_tools} & set(self.tools))
        if clashes:
            raise ToolSetupError(f"tools offered twice (registry and episode): {clashes}")
        if getattr(kernel, "directory", None) is None:
            raise ToolSetupError(
                "host-side tools need kernels on this machine (a Unix socket in the kernel's "
                "directory); use the local backend with tools="
            )
        socket_path = kernel.run_dir / SOCKET_NAME
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            raise ToolSetupError(
                f"the tool socket path {socket_path} is too long for a Unix socket; "
                "use a shorter pool root_dir"
            )
        files_dir = kernel.directory / FILES_DIR_NAME
        files_dir.mkdir(exist_ok=True)
        self._context = ToolContext(episode_id=episode_id, files_dir=files_dir)
        self._calls.clear()  # stragglers of the previous kernel's calls
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(socket_path), limit=MAX_MESSAGE_BYTES
        )
        os.chmod(socket_path, 0o600)
        self._attached_tools = {tool.name: tool for tool in extra_tools}
        outcome = await kernel.execute(
            install_code(
                str(socket_path),
                [*self.tools.values(), *extra_tools],
                exceptions=exceptions,
            ),
            timeout_s=timeout_s,
            silent=True,
        )
        if outcome.observation.error is not None:
            raise ToolSetupError(
                f"defining the tools in kernel {kernel.kernel_id} failed: "
                f"{outcome.observation.error.text}"
            )

    def detach(self) -> None:
        """Stop serving the current kernel (its socket goes with its directory)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in self._handlers:
            task.cancel()
        self._handlers.clear()
        self._context = None
        self._attached_tools = {}

    def take_calls(self) -> tuple[list[dict[str, Any]], int]:
        """The calls made since the last take, as JSON dicts (for ``metadata["tool_calls"]``):
        the first :data:`MAX_RECORDED_CALLS`, and how many more were made but not recorded."""
        calls, self._calls = self._calls, []
        dropped, self._calls_dropped = self._calls_dropped, 0
        return [call.model_dump(mode="json") for call in calls], dropped

    async def aclose(self) -> None:
        """Stop serving and disconnect the MCP servers. Safe to call twice."""
        self.detach()
        connections, self._connections = self._connections, []
        for connection in connections:
            await connection.aclose()

    # -- serving ----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if len(self._handlers) > MAX_CONCURRENT_CALLS:
                writer.write(_refusal(
                    f"more than {MAX_CONCURRENT_CALLS} tool calls at once; wait for one to end"
                ))
                await writer.drain()
                return
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_LINE_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.warning("tool request line not sent within %g s", REQUEST_LINE_TIMEOUT_S)
                return
            if not line:
                return
            answer = asyncio.ensure_future(self._answer(line))
            # The stub closes its socket when the agent's code is interrupted (a timeout):
            # then the tool is cancelled rather than left running for nobody.
            hangup = asyncio.ensure_future(reader.read(1))
            try:
                await asyncio.wait({answer, hangup}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                hangup.cancel()
                answer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                writer.write(await answer + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log.warning("tool request failed: %s", exc)
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> bytes:
        started = time.perf_counter()
        name, arguments = "?", {}
        try:
            request = json.loads(line)
            name = str(request["tool"])
            tool = self.tools.get(name) or self._attached_tools.get(name)
            if tool is None:
                known = sorted([*self.tools, *self._attached_tools])
                raise NameError(f"no tool named {name!r}; the tools are {known}")
            bound = tool.signature.bind(*request.get("args", ()), **request.get("kwargs", {}))
            arguments = dict(bound.arguments)
            assert self._context is not None
            result = to_json(name, await tool.invoke(bound, self._context))
        except asyncio.CancelledError:
            interrupted = (
                "Interrupted",
                "the calling code was interrupted (or the episode ended) before the tool returned",
            )
            self._record(name, arguments, started, error=interrupted)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a tool goes back to the agent
            self._record(name, arguments, started, error=(type(exc).__name__, str(exc)))
            return json.dumps({"ok": False, "error_type": type(exc).__name__, "error": str(exc)}).encode()
        reply = json.dumps({"ok": True, "result": result})
        self._record(name, arguments, started, result=result, reply_chars=len(reply))
        return reply.encode()

    def _record(
        self,
        name: str,
        arguments: dict[str, Any],
        started: float,
        *,
        result: Any = None,
        reply_chars: int = 0,
        error: tuple[str, str] | None = None,
    ) -> None:
        if len(self._calls) >= MAX_RECORDED_CALLS:
            self._calls_dropped += 1
            return
        truncated = reply_chars > RECORDED_RESULT_CHARS
        self._calls.append(
            ToolCall(
                tool=name,
                arguments=_preview(_jsonable(arguments)),
                ok=error is None,
                result=json.dumps(result)[:RECORDED_RESULT_CHARS] if truncated else result,
                result_truncated=truncated,
                error_type=error[0] if error else None,
                error=error[1] if error else None,
                duration_s=time.perf_counter() - started,
            )
        )


def to_json(tool_name: str, value: Any) -> Any:
    """``value`` as JSON data (pydantic models, dataclasses, paths and tuples included)."""
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError as exc:
        raise ToolError(
            f"tool {tool_name}() returned a {type(value).__name__}, which is not JSON data"
        ) from exc


def _jsonable(value: Any) -> Any:
    return to_jsonable_python(value, fallback=repr)


def _preview(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments as recorded: long strings (a file's content) cut to a preview, and any
    other value holding more than that many bytes replaced by a note of its size."""
    recorded: dict[str, Any] = {}
    for name, value in arguments.items():
        if isinstance(value, str) and len(value) > RECORDED_RESULT_CHARS:
            recorded[name] = f"{value[:RECORDED_RESULT_CHARS]}... [{len(value)} characters]"
        elif not isinstance(value, str) and (size := held_bytes(value)) > 4 * RECORDED_RESULT_CHARS:
            recorded[name] = f"[a {type(value).__name__} of about {size} bytes, not recorded]"
        else:
            recorded[name] = value
    return recorded


# -- the kernel side ----------------------------------------------------------------------


def tool_spec(tool: Tool) -> dict[str, Any]:
    """What the kernel needs to build a tool's stub: name, docstring and parameters."""
    parameters = []
    for param in tool.signature.parameters.values():
        spec: dict[str, Any] = {"name": param.name, "kind": param.kind.name}
        if param.default is not inspect.Parameter.empty:
            try:
                spec["default"] = json.loads(json.dumps(param.default))
            except (TypeError, ValueError):
                spec["default_repr"] = repr(param.default)
        parameters.append(spec)
    return {"name": tool.name, "description": tool.description, "parameters": parameters}


def _refusal(message: str) -> bytes:
    return json.dumps({"ok": False, "error_type": "ToolError", "error": message}).encode() + b"\n"


def exception_spec(name: str, cls: type[BaseException]) -> dict[str, Any]:
    """What the kernel needs to define a look-alike of ``cls``: its name, builtin base and doc."""
    base = next(
        (k.__name__ for k in cls.__mro__[1:] if getattr(builtins, k.__name__, None) is k),
        "Exception",
    )
    if not issubclass(getattr(builtins, base), Exception):
        base = "Exception"  # never a BaseException that agent code's `except Exception` misses
    return {"name": name, "base": base, "doc": inspect.getdoc(cls) or ""}


def install_code(
    socket_path: str, tools: Any, exceptions: Mapping[str, type[BaseException]] | None = None
) -> str:
    """The cell that defines a stub for each tool (and ``ToolError``) in the kernel.

    The stubs are compiled under their own file name, so a traceback through them says
    ``<kernelenv tools>`` rather than pointing at a cell the agent never wrote.
    """
    specs = json.dumps([tool_spec(tool) for tool in tools])
    errors = json.dumps([exception_spec(n, c) for n, c in (exceptions or {}).items()])
    source = (
        inspect.getsource(_install_tool_stubs)
        + f"_install_tool_stubs({socket_path!r}, json.loads({specs!r}), namespace, "
        f"json.loads({errors!r}))\n"
    )
    return (
        f"exec(compile({source!r}, '<kernelenv tools>', 'exec'), "
        "{'namespace': globals(), 'json': __import__('json')})\n"
    )


def _install_tool_stubs(socket_path, specs, namespace, error_specs=()):
    """Define tool stubs in ``namespace``. Runs inside the kernel: self-contained on purpose."""
    import builtins
    import inspect
    import json
    import socket

    class ToolError(RuntimeError):
        """A tool failed on the host."""

    ToolError.__module__ = "kernelenv.tools.registry"
    # Exceptions of the host's tools (a task's StepLimitError), raised under their own names.
    own_errors = {
        spec["name"]: type(
            spec["name"],
            (getattr(builtins, spec["base"]),),
            {"__doc__": spec["doc"] or None, "__module__": "kernelenv.tools.registry"},
        )
        for spec in error_specs
    }

    class DefaultRepr:
        def __init__(self, text):
            self.text = text

        def __repr__(self):
            return self.text

    def call(name, args, kwargs):
        __tracebackhide__ = True
        try:
            request = json.dumps({"tool": name, "args": list(args), "kwargs": kwargs})
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"arguments of {name}() must be JSON data (str, int, float, bool, None, "
                f"list, dict): {exc}"
            ) from None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(socket_path)
            sock.sendall(request.encode() + b"\n")
            with sock.makefile("rb") as stream:
                line = stream.readline()
        if not line:
            raise ToolError(f"{name}() got no answer from the host")
        reply = json.loads(line)
        if reply["ok"]:
            return reply["result"]
        if reply["error_type"] in own_errors:
            raise own_errors[reply["error_type"]](reply["error"])
        error_type = getattr(builtins, reply["error_type"], None)
        if isinstance(error_type, type) and issubclass(error_type, Exception):
            try:
                error = error_type(reply["error"])
            except Exception:  # noqa: BLE001 - an exception class with other arguments
                error = None
            if error is not None:
                raise error
        raise ToolError(f"{reply['error_type']}: {reply['error']}")

    def make_stub(spec):
        name = spec["name"]

        def stub(*args, **kwargs):
            __tracebackhide__ = True  # IPython leaves the stub's frames out of tracebacks
            return call(name, args, kwargs)

        stub.__name__ = stub.__qualname__ = name
        stub.__module__ = "kernelenv.tools.registry"
        stub.__doc__ = spec["description"] or None
        parameters = []
        for param in spec["parameters"]:
            default = inspect.Parameter.empty
            if "default" in param:
                default = param["default"]
            elif "default_repr" in param:
                default = DefaultRepr(param["default_repr"])
            kind = getattr(inspect.Parameter, param["kind"])
            parameters.append(inspect.Parameter(param["name"], kind, default=default))
        stub.__signature__ = inspect.Signature(parameters)
        return stub

    for spec in specs:
        namespace[spec["name"]] = make_stub(spec)
    namespace.update(own_errors)
    namespace["ToolError"] = ToolError

