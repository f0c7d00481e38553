"""A Gymnasium environment over :class:`KernelEnv`: actions are Python code, observations text.

Example:
    >>> import gymnasium, kernelenv.integrations.gym
    >>> env = gymnasium.make("kernelenv/Python-v0")
    >>> observation, info = env.reset(seed=0)
    >>> observation, reward, terminated, truncated, info = env.step("print(6 * 7)")
    >>> print(observation)
    status: ok (exit code 0)
    stdout:
    42

Step limits are Gymnasium's own wrapper (``gymnasium.wrappers.TimeLimit``, or
``max_episode_steps=`` of ``gymnasium.make``), not an option here.
"""

from __future__ import annotations

import string
from typing import Any

try:
    import gymnasium
    from gymnasium import spaces
except ImportError as exc:  # an optional extra
    raise ImportError("kernelenv.integrations.gym needs Gymnasium: pip install 'kernelenv[gym]'") from exc

from ..env import KernelEnv
from ..models import CodeObservation, observation_summary, task_text
from ..sync import SyncKernelEnv

ENV_ID = "kernelenv/Python-v0"

# Printable ASCII and whitespace; other characters reach observations as escapes (\xe9).
CHARSET = frozenset(string.printable)
TRUNCATED_MARKER = "\n[... output truncated]"


class KernelGymEnv(gymnasium.Env[str, str]):
    """Each episode is a fresh IPython kernel; each step runs one cell of Python code.

    Observations are text: a task's prompt after :meth:`reset` (empty for a plain episode),
    then each step's status, printed output, errors and result. The reward is the step's
    reward (set by a task or a ``transform``, else 0.0); ``terminated`` is the step's ``done``.
    ``info`` carries the observation's other fields (``status``, ``exit_code``, ``error``,
    ``outputs``, task fields...), and after :meth:`reset` the ``episode_id``.

    Args:
        render_mode: None, or ``"ansi"`` for :meth:`render` to return the last observation.
        max_observation_chars: Longest observation text (longer output is cut with a marker).
        max_code_chars: Longest action the action space describes.
        **env_options: Passed to :class:`KernelEnv` (``pool_size``, ``step_timeout_s``,
            ``backend``, ``transform``, ...), which is then ``self.kernel_env`` (blocking).
    """

    # A text env renders on demand; the frame rate only quiets Gymnasium's render checker.
    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        max_observation_chars: int = 16_384,
        max_code_chars: int = 16_384,
        **env_options: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = spaces.Text(max_observation_chars, min_length=0, charset=CHARSET)
        self.action_space = spaces.Text(max_code_chars, min_length=0, charset=CHARSET)
        self.kernel_env: SyncKernelEnv = KernelEnv(**env_options).sync()
        self._last_text = ""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Start an episode on a fresh kernel.

        Args:
            seed: Seeds ``self.np_random`` and Python's ``random`` in the kernel.
            options: Options of :meth:`KernelEnv.reset`, e.g. ``{"task_id": ...}``.
        """
        super().reset(seed=seed)
        observation = self.kernel_env.reset(seed=seed, **(options or {}))
        self._last_text = self._fit(task_text(observation))
        info = {**_info(observation), "episode_id": self.kernel_env.state.episode_id}
        return self._last_text, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Run ``action`` (Python code) in the episode's kernel."""
        observation = self.kernel_env.step(action)
        self._last_text = self._fit(observation_summary(observation))
        reward = float(observation.reward) if observation.reward is not None else 0.0
        return self._last_text, reward, observation.done, False, _info(observation)

    def render(self) -> str | None:
        """The last observation's text (``render_mode="ansi"``), else None."""
        return self._last_text if self.render_mode == "ansi" else None

    def close(self) -> None:
        """Stop the kernels. Safe to call twice."""
        self.kernel_env.close()

    def _fit(self, text: str) -> str:
        """``text`` made a member of the observation space (escaped, then cut to length)."""
        text = "".join(c if c in CHARSET else c.encode("unicode_escape").decode() for c in text)
        limit = self.observation_space.max_length
        if len(text) > limit:
            text = text[: limit - len(TRUNCATED_MARKER)] + TRUNCATED_MARKER
        return text


def _info(observation: CodeObservation) -> dict[str, Any]:
    # Only what the code determines: Gymnasium's checker wants equal infos for equal steps.
    return observation.model_dump(
        mode="json",
        exclude={"stdout", "stderr", "return_value", "done", "reward", "duration_s", "metadata"},
    )


if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point=KernelGymEnv)
