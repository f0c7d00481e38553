"""``kernelenv demo``: one episode on local kernels that shows what an observation carries."""

from __future__ import annotations

import argparse
import textwrap

DEMO_STEPS = [
    ("state persists across steps", "x = 5 + 3\nprint(f'Result: {x}')"),
    ("the last expression is the return value", "import math\nx * math.pi"),
    ("rich output (HTML)", "from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))"),
    ("an exception is data, not a crash", "1 / 0"),
    ("input() fails at once instead of hanging", "input('name? ')"),
    ("a timeout interrupts the cell, state survives", "import time\ntime.sleep(60)"),
    ("the episode goes on", "print('x is still', x)"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=2.0, help="step timeout in seconds")


def run(args: argparse.Namespace) -> int:
    from .env import KernelEnv
    from .models import CodeAction

    with KernelEnv(step_timeout_s=args.timeout).sync() as env:
        env.reset()
        print(f"episode {env.state.episode_id} on a fresh IPython kernel\n")
        for title, code in DEMO_STEPS:
            obs = env.step(CodeAction(code=code))
            print(f"--- {title}")
            print(textwrap.indent(code, "  >>> "))
            print(f"  status={obs.status.value} exit_code={obs.exit_code} "
                  f"execution_count={obs.execution_count} duration={obs.duration_s * 1000:.1f} ms")
            if obs.stdout:
                print(textwrap.indent(obs.stdout.rstrip(), "  stdout: "))
            if obs.return_value is not None:
                print(f"  return_value: {obs.return_value}")
            rich = [m for o in obs.outputs for m in o.get("data", {}) if m != "text/plain"]
            if rich:
                print(f"  rich outputs: {', '.join(rich)}")
            if obs.error is not None:
                print(f"  error: {obs.error.ename}: {obs.error.evalue}")
            print()
        state = env.state
        print(f"state: episode_id={state.episode_id} step_count={state.step_count} "
              f"last_exit_code={state.last_exit_code}")
    return 0
