"""Every Python block of the README runs as written, each as a script of its own.

Blocks run in README order, in one working directory (a block may use a file an earlier one
wrote), each in a fresh interpreter with a time limit (see script_runner.py): a snippet that
fails, prints a traceback from our clean-up, never exits, or leaves a kernel behind fails its
test. An HTML comment right before a block changes how it runs:

- ``<!-- readme-test: server -->``: a server is running at the address the block names
  (``http://127.0.0.1:8000`` is replaced by a plain ``kernelenv serve``'s; the block finds its
  token as a reader's client does, from the server's info file).
- ``<!-- readme-test: notebook -->``: top-level ``await``, run as a notebook cell runs it.
- ``<!-- readme-test: file NAME -->``: saved as NAME for later blocks, not run.
- ``<!-- readme-test: skip (why) -->``: not run; the reason is shown.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from local_server import start_plain_server, stop
from script_runner import run_script

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
README_ADDRESS = "http://127.0.0.1:8000"
# At most this many blocks may be skipped: a README whose examples are not run is not tested.
MAX_SKIPPED = 1

_BLOCK = re.compile(
    r"(?:<!--\s*readme-test:\s*(?P<mark>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)```",
    re.DOTALL,
)

# Runs a block the way IPython runs a notebook cell with top-level await.
NOTEBOOK_CELL = textwrap.dedent('''
    import ast, asyncio, sys

    source = open(sys.argv[0] + ".cell").read()
    code = compile(source, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, {"__name__": "__main__"})
    if asyncio.iscoroutine(result):
        asyncio.run(result)
''')


@dataclass
class Block:
    """One ``python`` block of the README and how to run it."""

    line: int
    code: str
    mark: str

    @property
    def id(self) -> str:
        return f"line{self.line}"


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("mark") or "")
        for m in _BLOCK.finditer(text)
    ]


BLOCKS = readme_blocks()


def test_the_readme_has_blocks_and_few_are_skipped():
    assert len(BLOCKS) >= 15
    skipped = [b for b in BLOCKS if b.mark.startswith("skip")]
    assert len(skipped) <= MAX_SKIPPED, [b.id for b in skipped]
    for block in skipped:
        assert re.fullmatch(r"skip \(.+\)", block.mark), f"{block.id}: a skip says why"
    known = ("", "server", "notebook")
    for block in BLOCKS:
        assert block.mark in known or block.mark.startswith(("file ", "skip")), block.mark


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One directory for every block, as a reader working through the README has."""
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A plain ``kernelenv serve`` (its own token, as a reader starts it), for blocks marked
    ``server``; the blocks find its token as a reader's would, from its server info file."""
    runtime = tmp_path_factory.mktemp("runtime")
    process, info = start_plain_server(runtime)
    try:
        yield info["url"], runtime
    finally:
        stop(process)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block: Block, workdir: Path, request):
    mark = block.mark
    if mark.startswith("skip"):
        pytest.skip(f"README {block.id}: {mark}")
    if mark.startswith("file "):
        (workdir / mark.removeprefix("file ").strip()).write_text(block.code)
        return
    source, env = block.code, {}
    if mark == "server":
        url, runtime = request.getfixturevalue("server")
        assert README_ADDRESS in source, "a server block names the README's address"
        source = source.replace(README_ADDRESS, url)
        env["KERNELENV_RUNTIME_DIR"] = str(runtime)
    name = f"readme_{block.id}.py"
    if mark == "notebook":
        (workdir / f"{name}.cell").write_text(source)
        source = NOTEBOOK_CELL
    run = run_script(source, workdir, name=name, env=env)
    assert run.returncode == 0, f"README {block.id} failed:\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr, run.stderr
    run.assert_nothing_left()
