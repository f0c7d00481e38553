"""Transforms: functions from observation to observation that compute rewards (as in EnvTorch).

A transform reads what the step actually did (``status``, ``return_value``, ``stdout``,
``error``, ``metadata["tool_calls"]``) and the code that ran, which the env puts in
``metadata["last_code"]`` before any transform sees the observation (OpenEnv's convention, so
OpenEnv-style transforms work unchanged). Rewards add up: each transform adds its part to
``observation.reward`` and records it under ``metadata["rewards"][<name>]``, so a trainer can
see where a reward came from.
"""

from __future__ import annotations

import ast
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable

from ..models import CodeObservation, StepStatus

CODE_KEY = "last_code"
REWARDS_KEY = "rewards"


class Transform(ABC):
    """Turns an observation into an observation (usually adding to its reward). Callable."""

    #: Key of this transform's part in ``metadata["rewards"]``.
    name: str = "transform"

    @abstractmethod
    def __call__(self, observation: CodeObservation) -> CodeObservation:
        """Return the transformed observation (it may be the same object, changed)."""


def code_of(observation: CodeObservation) -> str:
    """The code that produced ``observation`` (empty when the env did not record it)."""
    return str(observation.metadata.get(CODE_KEY) or "")


def add_reward(observation: CodeObservation, name: str, value: float) -> CodeObservation:
    """Add ``value`` to the observation's reward and record it as the part called ``name``."""
    observation.reward = (observation.reward or 0.0) + value
    parts = observation.metadata.setdefault(REWARDS_KEY, {})
    parts[name] = parts.get(name, 0.0) + value
    return observation


class CompositeTransform(Transform):
    """Applies several transforms in order; their rewards add up.

    Args:
        transforms: The transforms, applied first to last.
    """

    name = "composite"

    def __init__(self, transforms: Iterable[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, observation: CodeObservation) -> CodeObservation:
        for transform in self.transforms:
            observation = transform(observation)
        return observation

    def __repr__(self) -> str:
        return f"CompositeTransform({self.transforms!r})"


# Calls that reach outside the kernel's own memory: processes, the file system's destructive
# operations, dynamic code, and the interpreter's exits.
UNSAFE_CALLS = frozenset({
    "os.system", "os.popen", "os.remove", "os.unlink", "os.rmdir", "os.removedirs",
    "os.kill", "os.killpg", "os.fork", "os.execv", "os.execve", "os.execvp", "os._exit",
    "os.spawnv", "os.spawnl", "os.chmod", "os.chown",
    "shutil.rmtree", "shutil.move",
    "subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
    "subprocess.Popen", "subprocess.getoutput", "subprocess.getstatusoutput",
    "eval", "exec", "compile", "__import__", "importlib.import_module",
    "sys.exit", "exit", "quit",
    "socket.socket", "ctypes.CDLL",
})
UNSAFE_IMPORTS = frozenset({"subprocess", "ctypes", "socket", "pty", "multiprocessing"})
# IPython syntax that runs a shell: `!cmd`, `%system`, `%%bash`, `%%sh`, `%%script`.
SHELL_ESCAPE = re.compile(r"^[ \t]*(!|%%?(system|sx|bash|sh|script)\b)", re.MULTILINE)


def find_unsafe_patterns(code: str) -> list[str]:
    """The unsafe things ``code`` does, by name (e.g. ``["os.system", "import subprocess"]``).

    The code is parsed, so names in strings or comments do not count. Lines of IPython shell
    syntax are reported too; code that does not parse is checked for them only.
    """
    found = [f"shell escape {m.group(0).strip()}" for m in SHELL_ESCAPE.finditer(code)]
    try:
        tree = ast.parse(SHELL_ESCAPE.sub("pass  #", code))
    except SyntaxError:
        return found
    aliases: dict[str, str] = {}  # local name -> module or dotted origin
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
                if alias.name.split(".")[0] in UNSAFE_IMPORTS:
                    found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            if node.module.split(".")[0] in UNSAFE_IMPORTS:
                found.append(f"import {node.module}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func, aliases)
            if name in UNSAFE_CALLS:
                found.append(name)
    return list(dict.fromkeys(found))


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


class CodeSafetyTransform(Transform):
    """Penalizes code that runs shells, deletes files, evaluates strings or exits.

    Adds ``penalty`` once per step with violations (listed in
    ``metadata["safety_violations"]``), and nothing otherwise.

    Args:
        penalty: The reward added to an unsafe step (negative).
    """

    name = "safety"

    def __init__(self, penalty: float = -1.0) -> None:
        self.penalty = penalty

    def __call__(self, observation: CodeObservation) -> CodeObservation:
        violations = find_unsafe_patterns(code_of(observation))
        if violations:
            observation.metadata["safety_violations"] = violations
        return add_reward(observation, self.name, self.penalty if violations else 0.0)


# A number as Python prints it: 42, -3.5, 1e-09, 2.0j is not one.
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_WRAPPED = re.compile(r"[A-Za-z_][\w.]*\((.*)\)", re.DOTALL)


def answer_of(observation: CodeObservation) -> str | None:
    """The step's answer as text: its value (last expression), else its last printed line."""
    if observation.return_value is not None:
        return observation.return_value.strip()
    lines = [line.strip() for line in observation.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _as_number(text: str) -> float | None:
    text = text.strip().strip("'\"")
    if wrapped := _WRAPPED.fullmatch(text):  # np.float64(42.0), Decimal('42'), tensor(42)
        text = wrapped.group(1).strip().strip("'\"")
    try:
        return float(text)
    except ValueError:
        pass
    numbers = _NUMBER.findall(text)  # e.g. "Answer: 42" or "np.float64(42.0)"
    return float(numbers[-1]) if len(numbers) == 1 else None


class MathProblemTransform(Transform):
    """Rewards a step whose result equals the expected answer.

    The result is what the step actually produced: the value of its last expression, or else
    the last line it printed. A step that failed earns nothing, whatever its code says.

    Args:
        expected_answer: The correct answer (a number, or any value compared as text).
        correct_reward: Reward for a correct answer.
        wrong_reward: Reward for a wrong or missing answer.
        rel_tol: Relative tolerance for numeric answers.
        abs_tol: Absolute tolerance for numeric answers.
    """

    name = "math"

    def __init__(
        self,
        expected_answer: object,
        *,
        correct_reward: float = 1.0,
        wrong_reward: float = 0.0,
        rel_tol: float = 1e-9,
        abs_tol: float = 1e-9,
    ) -> None:
        self.expected_answer = expected_answer
        self.correct_reward = correct_reward
        self.wrong_reward = wrong_reward
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol

    def is_correct(self, answer: str | None) -> bool:
        """Whether ``answer`` (text) matches the expected answer."""
        if answer is None:
            return False
        expected = self.expected_answer
        if isinstance(expected, (int, float)) and not isinstance(expected, bool):
            got = _as_number(answer)
            return got is not None and math.isclose(
                got, float(expected), rel_tol=self.rel_tol, abs_tol=self.abs_tol
            )
        return answer.strip("'\"") == str(expected)

    def __call__(self, observation: CodeObservation) -> CodeObservation:
        answer = answer_of(observation) if observation.status is StepStatus.OK else None
        correct = self.is_correct(answer)
        observation.metadata["answer"] = answer
        observation.metadata["answer_correct"] = correct
        reward = self.correct_reward if correct else self.wrong_reward
        return add_reward(observation, self.name, reward)


class CodeQualityTransform(Transform):
    """Small bonuses for code that ran cleanly and is short.

    * ``clean_run_bonus`` when the step finished ``ok`` and wrote nothing to stderr;
    * ``concise_bonus`` when the code has at most ``max_lines`` non-blank lines;
    * ``error_penalty`` (negative) when the step raised, timed out or killed its kernel.

    Args:
        clean_run_bonus: Bonus for a clean run.
        concise_bonus: Bonus for short code.
        error_penalty: Reward added when the step failed.
        max_lines: Longest code (non-blank lines) that counts as concise.
    """

    name = "quality"

    def __init__(
        self,
        *,
        clean_run_bonus: float = 0.1,
        concise_bonus: float = 0.1,
        error_penalty: float = -0.1,
        max_lines: int = 20,
    ) -> None:
        self.clean_run_bonus = clean_run_bonus
        self.concise_bonus = concise_bonus
        self.error_penalty = error_penalty
        self.max_lines = max_lines

    @property
    def max_bonus(self) -> float:
        """The largest reward this transform gives to one step."""
        return self.clean_run_bonus + self.concise_bonus

    def __call__(self, observation: CodeObservation) -> CodeObservation:
        reward = 0.0
        if observation.status is StepStatus.OK:
            if not observation.stderr.strip():
                reward += self.clean_run_bonus
        else:
            reward += self.error_penalty
        lines = [line for line in code_of(observation).splitlines() if line.strip()]
        if 0 < len(lines) <= self.max_lines:
            reward += self.concise_bonus
        return add_reward(observation, self.name, reward)
