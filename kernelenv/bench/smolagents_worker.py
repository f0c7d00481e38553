"""Runs cells in smolagents' LocalPythonExecutor, one JSON line in and one out (a separate venv).

This file is run by the interpreter of the smolagents virtual environment, so it imports only
the standard library and smolagents. It builds the executor as OpenEnv's coding_env does.

Protocol: each input line is ``{"code": "..."}``; each output line is
``{"stdout": "...", "return_value": "...", "error": "..." | null}``.
"""

import json
import sys

from smolagents import LocalPythonExecutor


def main() -> None:
    executor = LocalPythonExecutor(additional_authorized_imports=[])
    executor.send_tools({})
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        code = json.loads(line)["code"]
        try:
            result = executor(code)
            reply = {"stdout": result.logs, "return_value": repr(result.output), "error": None}
        except Exception as exc:  # the interpreter's errors are data for the benchmark
            reply = {"stdout": "", "return_value": None, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
