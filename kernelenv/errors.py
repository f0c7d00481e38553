"""The exception tree of kernelenv.

Errors in the agent's code are never exceptions: they are data in the observation.
Exceptions are for faults of the infrastructure and for misuse of the API::

    KernelEnvError
    ├── KernelStartError (RuntimeError)      a kernel could not be started or did not become ready
    ├── SandboxUnavailableError (RuntimeError)  an explicitly asked-for sandbox level is unusable
    ├── KernelCommunicationError (RuntimeError)  the kernel stopped answering outside of a step
    ├── ResetNeeded (RuntimeError)           step() or state before reset(), or after close()
    ├── ForkError (RuntimeError)             an episode cannot be forked (threads, child processes,
    │                                        a dead kernel); the message says why
    ├── EnvClosedError (RuntimeError)        the env, pool or client was closed
    ├── PoolExhaustedError (TimeoutError)    no kernel became available in time
    ├── InvalidActionError (ValueError)      the action is malformed
    ├── UnknownTaskError (LookupError)       no task has that id (suggests close names)
    ├── TaskFormatError (ValueError)         a task notebook is malformed, or its setup failed
    ├── DatasetFormatError (ValueError)      a dataset file to import (or a completions file) is malformed
    ├── UnknownEpisodeError (LookupError)    no live episode has that id
    ├── InvalidEpisodeIdError (ValueError)   an episode id with characters or a length not allowed
    ├── ServerStartError (RuntimeError)      a server launched for a client did not start
    ├── MCPConnectionError (ConnectionError)  an MCP server of the tools could not be reached
    ├── ToolSetupError (RuntimeError)        host-side tools could not be set up in a kernel
    ├── CapacityReachedError (RuntimeError)  a server already runs its maximum of sessions
    ├── EpisodeInUseError (ValueError)       another live session runs an episode of that id
    ├── ToolError (RuntimeError)             raised by a host-side tool, re-raised in agent code
    ├── JournalError (OSError)               a journal with fsync=True could not make a step durable
    ├── ReplayError (ValueError)             a notebook cannot be replayed as asked (its directory)
    ├── JsonRpcError                         an MCP JSON-RPC error to answer with (server side)
    └── ServerError (RuntimeError)           a kernelenv server answered with an error frame


Third-party errors (zmq, jupyter_client) are translated at the boundary with
``raise ... from exc`` so that callers only need to catch ``KernelEnvError``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KernelEnvError(Exception):
    """Root of every exception raised by kernelenv."""


class KernelStartError(KernelEnvError, RuntimeError):
    """A kernel could not be started or did not become ready in time."""


class SandboxUnavailableError(KernelEnvError, RuntimeError):
    """A containment level was asked for explicitly, but this machine cannot provide it."""


class KernelCommunicationError(KernelEnvError, RuntimeError):
    """The kernel stopped answering outside of a step (a step reports this as data)."""


class ResetNeeded(KernelEnvError, RuntimeError):
    """``step()`` (or ``state``) was called before ``reset()``."""


class ForkError(KernelEnvError, RuntimeError):
    """An episode cannot be forked faithfully now (the message says why and what to do)."""


class EnvClosedError(KernelEnvError, RuntimeError):
    """The environment, pool or client was already closed."""


class PoolExhaustedError(KernelEnvError, TimeoutError):
    """No kernel became available within the acquire timeout."""


class InvalidActionError(KernelEnvError, ValueError):
    """The action is malformed (for example, code that is not a string)."""


class UnknownTaskError(KernelEnvError, LookupError):
    """No task in the library has the requested id."""

    def __init__(self, task_id: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(task_id, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        super().__init__(f"Unknown task id {task_id!r}.{hint} Known tasks: {listing}")
        self.task_id = task_id
        self.suggestions = close


class TaskFormatError(KernelEnvError, ValueError):
    """A task notebook is malformed (roles, metadata), or its setup failed to run."""


class DatasetFormatError(KernelEnvError, ValueError):
    """A dataset file to import, or a completions file to grade, is malformed."""


class UnknownEpisodeError(KernelEnvError, LookupError):
    """No live episode has the requested id (it never existed, was closed, or was reaped)."""


class MCPConnectionError(KernelEnvError, ConnectionError):
    """An MCP server whose tools an env offers could not be reached, or did not answer in time."""


class ToolSetupError(KernelEnvError, RuntimeError):
    """Host-side tools could not be set up for a kernel (see ``kernelenv.tools.registry``)."""


class ServerStartError(KernelEnvError, RuntimeError):
    """A server for a client (a Docker container or a local subprocess) did not start."""


class ServerError(KernelEnvError, RuntimeError):
    """A kernelenv server answered with an error."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(f"{message} (code: {code})" if code else message)
        self.code = code


class CapacityReachedError(KernelEnvError, RuntimeError):
    """The server already runs ``max_sessions`` sessions."""

    def __init__(self, active_sessions: int, max_sessions: int) -> None:
        super().__init__(
            f"the server is at capacity ({active_sessions} of {max_sessions} sessions); "
            "close a session or retry later"
        )
        self.active_sessions = active_sessions
        self.max_sessions = max_sessions


class InvalidEpisodeIdError(KernelEnvError, ValueError):
    """An episode id has characters or a length that ids may not have."""


class EpisodeInUseError(KernelEnvError, ValueError):
    """Another live session already runs an episode with the requested id."""


class ToolError(KernelEnvError, RuntimeError):
    """A tool failed in a way that has no matching builtin exception (raised in agent code)."""


class JournalError(KernelEnvError, OSError):
    """A journal asked to be durable (``fsync=True``) could not reach the disk.

    Without ``fsync=True`` such failures are logged and noted in the step's metadata instead.
    """


class ReplayError(KernelEnvError, ValueError):
    """A notebook cannot be replayed as asked (e.g. its directory is missing, hidden or too big)."""


class JsonRpcError(KernelEnvError):
    """A JSON-RPC error to send back."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
