"""Assert-counting tests for imported tasks: the code that imported notebooks run in kernels.

A dataset's tests (HumanEval's ``check(candidate)``, MBPP's ``assert`` lines) compare the
function's results with expected values. Run as written in the attempt's kernel they would put
the expected values where the attempt's code can reach them (its frames, ``__eq__``), so an
imported task splits them like every kernelenv task:

1. At import, the reference solution runs the tests once, in a sandboxed kernel, with a recording
   wrapper as the candidate: the arguments of every call are kept (as tagged JSON, see
   :data:`CODEC`), and so is the number of assertions that exercised the candidate.
2. The ``collect`` cell, in the attempt's kernel, calls the attempt's function on those recorded
   arguments only, each call under a time limit (after one call runs out of time the rest are
   not tried), and leaves the results as JSON.
3. The ``grader`` cell, in a kernel that never ran the attempt, runs the tests with a stand-in
   candidate that answers each call with the attempt's recorded result; every ``assert``
   (rewritten with :mod:`ast`) is counted, and the score is the fraction that passed.

An assertion counts only when the candidate was called since the previous one, so
``assert True`` and checks of helpers give no free credit. The sources below are plain Python
text, pasted into the notebooks (and the recorder) so that an imported notebook needs nothing
but Python to run.
"""

from __future__ import annotations

# Values as tagged JSON: only plain builtin types cross between kernels, and decoding makes
# fresh objects of exactly those types (no attempt-defined __eq__ survives the trip).
CODEC = r'''
import ast as _kx_ast
import json as _kx_json
import math as _kx_math


def _kx_encode(value, depth=0):
    if depth > 64:
        raise TypeError("nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, str):
        return value
    if kind is int:
        return value if abs(value) < 2 ** 53 else {"int": str(value)}
    if kind is float:
        return value if _kx_math.isfinite(value) else {"float": repr(value)}
    if kind is list:
        return [_kx_encode(item, depth + 1) for item in value]
    if kind is tuple:
        return {"tuple": [_kx_encode(item, depth + 1) for item in value]}
    if kind is dict:
        return {"dict": [[_kx_encode(k, depth + 1), _kx_encode(v, depth + 1)] for k, v in value.items()]}
    if kind in (set, frozenset):
        items = sorted((_kx_encode(item, depth + 1) for item in value), key=_kx_json.dumps)
        return {kind.__name__: items}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [_kx_encode(value.real), _kx_encode(value.imag)]}
    raise TypeError(f"a {kind.__name__} cannot be compared across kernels")


def _kx_decode(data):
    if isinstance(data, list):
        return [_kx_decode(item) for item in data]
    if not isinstance(data, dict):
        return data
    ((tag, body),) = data.items()
    if tag == "int":
        return int(body)
    if tag == "float":
        return float(body)
    if tag == "tuple":
        return tuple(_kx_decode(item) for item in body)
    if tag == "dict":
        return {_kx_decode(k): _kx_decode(v) for k, v in body}
    if tag == "set":
        return {_kx_decode(item) for item in body}
    if tag == "frozenset":
        return frozenset(_kx_decode(item) for item in body)
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "complex":
        return complex(_kx_decode(body[0]), _kx_decode(body[1]))
    raise ValueError(f"unknown tag {tag!r}")


def _kx_key(args, kwargs):
    """A call's arguments as canonical text (raises TypeError when they cannot be encoded)."""
    return _kx_json.dumps([_kx_encode(list(args)), _kx_encode(dict(sorted(kwargs.items())))],
                          sort_keys=True)
'''

# Runs a dataset's tests with every assert counted; ``candidate`` stands for the function.
RUNNER = r'''
class _KxTally:
    def __init__(self):
        self.calls = 0  # calls of the candidate so far
        self.calls_at_last_assert = 0
        self.counted = 0
        self.passed = 0
        self.first_failure = None

    def check(self, ok, line):
        # An assertion counts when it (or the code since the last one) called the candidate.
        if self.calls == self.calls_at_last_assert:
            return
        self.calls_at_last_assert = self.calls
        self.counted += 1
        if ok:
            self.passed += 1
        elif self.first_failure is None:
            self.first_failure = line


class _KxAsserts(_kx_ast.NodeTransformer):
    """``assert TEST`` -> ``try: ok = bool(TEST) except Exception: ok = False; tally(ok)``."""

    def visit_Assert(self, node):
        template = _kx_ast.parse(
            "try:\n    _kx_ok = bool(TEST)\nexcept Exception:\n    _kx_ok = False\n"
            f"_kx_tally.check(_kx_ok, {node.lineno})"
        ).body
        template[0].body[0].value.args[0] = node.test
        for statement in template:
            _kx_ast.copy_location(statement, node)
            _kx_ast.fix_missing_locations(statement)
        return template


def _kx_run_tests(starter, setup, tests, entry_point, call_check, candidate, tally):
    """Run the tests with ``candidate`` as the function; exceptions end the run, not the grade."""
    import builtins
    import random

    namespace = {"__name__": "__kx_tests__", "__builtins__": builtins, "_kx_tally": tally}
    for code in (setup, starter):
        try:
            exec(compile(code, "<setup>", "exec"), namespace)
        except Exception:
            pass  # a stub that does not run (HumanEval's prompt) only loses its helpers
    namespace[entry_point] = candidate
    random.seed(0)  # tests that draw random inputs draw the same ones as at import
    tree = _KxAsserts().visit(_kx_ast.parse(tests))
    _kx_ast.fix_missing_locations(tree)
    try:
        exec(compile(tree, "<tests>", "exec"), namespace)
        if call_check:
            namespace["check"](candidate)
    except Exception as exc:
        return f"the tests stopped early: {type(exc).__name__}"
    return None
'''

# The recorder of step 1: ``_kx_record(problem)`` runs the reference under the tests (in a
# sandboxed kernel, see importers.record_reference) and returns the recording as plain data.
RECORDER = CODEC + RUNNER + r'''
def _kx_record(problem):
    solution = {"__name__": "__kx_solution__"}
    exec(compile(problem["setup"], "<setup>", "exec"), solution)
    exec(compile(problem["solution"], "<solution>", "exec"), solution)
    function = solution[problem["entry_point"]]
    calls, keys, unencodable = [], set(), 0
    tally = _KxTally()

    def candidate(*args, **kwargs):
        nonlocal unencodable
        tally.calls += 1
        try:
            key = _kx_key(args, kwargs)
        except TypeError:
            unencodable += 1
        else:
            if key not in keys:
                keys.add(key)
                calls.append(_kx_json.loads(key))
        return function(*args, **kwargs)

    stopped = _kx_run_tests(problem["starter"], problem["setup"], problem["tests"],
                            problem["entry_point"], problem["call_check"], candidate, tally)
    return {"calls": calls, "asserts": tally.counted, "passed": tally.passed,
            "unencodable": unencodable, "stopped": stopped}

'''

# The collect cell's body (after _KX_ENTRY_POINT, _KX_CALLS and _KX_CALL_TIMEOUT_S are set).
COLLECT = r'''
def _kx_collect():
    import signal
    import time

    class _KxTimeout(BaseException):  # not an Exception: the attempt's `except` must not eat it
        pass

    def _alarm(signum, frame):
        raise _KxTimeout()

    function = globals().get(_KX_ENTRY_POINT)
    if not callable(function):
        return {"missing": _KX_ENTRY_POINT}
    previous = signal.signal(signal.SIGALRM, _alarm)
    deadline = time.monotonic() + _KX_COLLECT_BUDGET_S
    results = []
    try:
        for args, kwargs in _KX_CALLS:
            left = deadline - time.monotonic()
            # After one call ran out of time the others are not tried: a hang costs one budget.
            if left <= 0 or any("timeout" in result for result in results):
                results.append({"timeout": True})
                continue
            signal.setitimer(signal.ITIMER_REAL, min(_KX_CALL_TIMEOUT_S, left))
            try:
                value = function(*_kx_decode(args), **_kx_decode(kwargs))
                signal.setitimer(signal.ITIMER_REAL, 0)
                results.append({"value": _kx_encode(value)})
            except _KxTimeout:
                results.append({"timeout": True})
            except Exception as exc:  # a raised exception is a result too
                signal.setitimer(signal.ITIMER_REAL, 0)
                results.append({"raised": type(exc).__name__})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return {"results": results}


answer = _kx_collect()
'''

# The grader cell's body (after the _KX_* constants are set and ``answer`` is loaded).
GRADER = r'''
def _kx_grade(answer):
    given = answer if isinstance(answer, dict) else {}
    if "results" not in given:
        return {"score": 0.0, "components": {"assertions": 0.0},
                "feedback": f"No function named `{_KX_ENTRY_POINT}` was defined; nothing to test."}
    results = {}
    for call, result in zip(_KX_CALLS, given["results"]):
        results[_kx_json.dumps(call, sort_keys=True)] = result
    tally = _KxTally()

    def candidate(*args, **kwargs):
        tally.calls += 1
        try:
            result = results.get(_kx_key(args, kwargs))
        except TypeError:
            result = None
        if not isinstance(result, dict):
            raise LookupError("these arguments were not among the recorded calls")
        if "value" in result:
            return _kx_decode(result["value"])
        if result.get("timeout"):
            raise TimeoutError("the call ran out of time")
        raise RuntimeError(f"the call raised {result.get('raised', 'an error')}")

    stopped = _kx_run_tests(_KX_STARTER, _KX_SETUP, _KX_TESTS, _KX_ENTRY_POINT, _KX_CALL_CHECK,
                            candidate, tally)
    total = max(_KX_EXPECTED_ASSERTS, tally.counted, 1)
    score = tally.passed / total
    feedback = f"{tally.passed}/{total} hidden assertions passed."
    if tally.first_failure is not None:
        feedback += f" The first failing one is at line {tally.first_failure} of the tests."
    timeouts = sum("timeout" in r for r in given["results"] if isinstance(r, dict))
    raised = sum("raised" in r for r in given["results"] if isinstance(r, dict))
    if timeouts:
        feedback += f" {timeouts} calls ran out of time."
    if raised:
        feedback += f" {raised} calls raised an exception."
    if stopped:
        feedback += f" {stopped}."
    return {"score": score, "components": {"assertions": score}, "feedback": feedback}


grade = _kx_grade(answer)
print(f"score: {grade['score']:.4f}")
grade
'''
