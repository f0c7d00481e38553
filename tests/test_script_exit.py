"""Plain scripts that never close their blocking objects still exit, and leave no kernel behind.

Each script runs in its own interpreter (see script_runner.py), as a user runs it: the bug these
tests guard against only shows when the interpreter shuts down (it used to hang there forever).
"""

from __future__ import annotations

import textwrap

import pytest

from script_runner import run_script

pytestmark = pytest.mark.slow


def script(source: str) -> str:
    return textwrap.dedent(source).lstrip()


# EnvTorch's Quick Start, with only the import line changed: never closed, at module level.
ENVTORCH_QUICK_START = script('''
    from kernelenv import CodeAction, create_codeact_env

    # Create environment
    env = create_codeact_env()
    obs = env.reset()

    # Execute Python code
    action = CodeAction(code="""
    x = 10
    y = 20
    result = x * y
    print(f"Result: {result}")
    result  # Return value
    """)

    obs = env.step(action)
    print(f"Output: {obs.execution_result.stdout}")
    print(f"Return: {obs.execution_result.return_value}")
''')

# EnvTorch's RL example: a transform set on the env, a step without a reset.
ENVTORCH_RL = script('''
    from kernelenv import CodeAction, create_codeact_env, create_math_env_transform

    transform = create_math_env_transform(expected_answer=42)
    env = create_codeact_env()
    env.transform = transform

    action = CodeAction(code="21 * 2")  # Correct answer
    obs = env.step(action)
    print(obs.reward)
''')

BLOCKING_FACADE = script('''
    from kernelenv import KernelEnv

    env = KernelEnv().sync()
    env.reset(seed=0)
    print(env.step("6 * 7").return_value)
''')

FORKED = script('''
    from kernelenv import KernelEnv

    env = KernelEnv().sync()
    env.reset()
    env.step("x = 20")
    children = env.fork(2)          # children share their parent's loop; none is closed
    print([child.step("x + 1").return_value for child in children])
''')

GYMNASIUM = script('''
    import gymnasium
    import kernelenv.integrations.gym  # registers kernelenv/Python-v0

    env = gymnasium.make("kernelenv/Python-v0", max_episode_steps=20)
    observation, info = env.reset(seed=0)
    observation, reward, terminated, truncated, info = env.step("print(6 * 7)")
    print(observation)
''')

CLIENT_OF_A_LOCAL_SERVER = script('''
    from kernelenv import CodingEnv

    env = CodingEnv.from_local_server(max_sessions=2, pool_size=1).sync()
    env.reset()
    print(env.step("print('from the server')").observation.stdout)
''')

MCP_ENVIRONMENT = script('''
    import sys

    from kernelenv import CodeAction, MCPServer, create_mcp_environment

    env = create_mcp_environment(mcp_servers=[MCPServer.stdio(sys.executable, ["adder.py"])])
    obs = env.reset()
    obs = env.step(CodeAction(code="""
    file_write("/tmp/hello.txt", "Hello, world!")
    print(file_read("/tmp/hello.txt"), add(a=2, b=3))
    """))
    print(obs.stdout)
''')

ADDER_SERVER = script('''
    from mcp.server.fastmcp import FastMCP

    mcp = FastMCP("adder")

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    mcp.run()
''')

TRL_FACTORY = script('''
    from kernelenv.integrations.trl import KernelEnvFactory

    factory = KernelEnvFactory(pool_size=1)   # kept at module level, never closed
    env = factory()
    env.reset(answer="42")
    print(env.run_python("print(6 * 7)"))
    print("reward", env.get_reward())
''')


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(
            ENVTORCH_QUICK_START, ["Output: Result: 200", "Return: 200"], id="quick-start"
        ),
        pytest.param(ENVTORCH_RL, ["1.2"], id="rl-transform"),
        pytest.param(BLOCKING_FACADE, ["42"], id="blocking-facade"),
        pytest.param(FORKED, ["['21', '21']"], id="forked"),
        pytest.param(GYMNASIUM, ["status: ok", "42"], id="gymnasium"),
        pytest.param(CLIENT_OF_A_LOCAL_SERVER, ["from the server"], id="client-local-server"),
        pytest.param(TRL_FACTORY, ["42", "reward 1.0"], id="trl-factory"),
    ],
)
def test_a_script_that_never_closes_exits_and_leaves_nothing(tmp_path, source, expected):
    run = run_script(source, tmp_path)
    run.assert_clean()
    for text in expected:
        assert text in run.stdout, run.stdout
    assert "Traceback" not in run.stderr, run.stderr


def test_an_mcp_environment_with_a_server_exits(tmp_path):
    (tmp_path / "adder.py").write_text(ADDER_SERVER)
    run = run_script(MCP_ENVIRONMENT, tmp_path)
    run.assert_clean()
    assert "Hello, world! 5" in run.stdout, run.stdout
    assert "Traceback" not in run.stderr, run.stderr


def test_a_script_that_raises_exits_with_only_its_own_traceback(tmp_path):
    run = run_script(
        script('''
            from kernelenv import KernelEnv, create_codeact_env

            first = create_codeact_env()
            second = KernelEnv().sync()
            second.reset()
            print(first.step("1 + 1").return_value)
            raise RuntimeError("the user's own error")
        '''),
        tmp_path,
    )
    assert run.returncode == 1
    assert "2" in run.stdout
    assert run.stderr.count("Traceback") == 1, run.stderr
    assert "RuntimeError: the user's own error" in run.stderr
    run.assert_nothing_left()


def test_closing_twice_and_from_another_thread(tmp_path):
    run = run_script(
        script('''
            import threading

            from kernelenv import EnvClosedError, KernelEnv, create_codeact_env

            env = create_codeact_env()
            closer = threading.Thread(target=env.close)
            closer.start()
            closer.join()
            env.close()                       # a second time, from the main thread
            try:
                env.step("1")
            except EnvClosedError:
                print("closed")

            # Many threads racing to close one env: exactly one close runs, none fails.
            other = KernelEnv().sync()
            other.reset()
            racers = [threading.Thread(target=other.close) for _ in range(8)]
            for racer in racers:
                racer.start()
            for racer in racers:
                racer.join()
            print("raced", other.closed)
        '''),
        tmp_path,
    )
    run.assert_clean()
    assert "closed" in run.stdout and "raced True" in run.stdout, run.stdout
    assert "Traceback" not in run.stderr, run.stderr


def test_a_forgotten_env_is_closed_when_collected(tmp_path):
    """Dropped mid-script, not at exit: its kernels stop at once, while the script goes on."""
    run = run_script(
        script('''
            import gc, glob, os, tempfile

            from kernelenv import KernelEnv

            def pools():
                return glob.glob(os.path.join(tempfile.gettempdir(), "kernelenv-*"))

            env = KernelEnv().sync()
            env.reset()
            print("pools while open", len(pools()))
            del env
            gc.collect()
            print("pools after collection", len(pools()))
        '''),
        tmp_path,
    )
    run.assert_clean()
    assert "pools while open 1" in run.stdout, run.stdout
    assert "pools after collection 0" in run.stdout, run.stdout
