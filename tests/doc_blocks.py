"""The code blocks of the README and of the documentation pages (docs/), run as written.

Blocks run in page order, the pages of one test module in one working directory (a block may use
a file an earlier one wrote), each in a fresh interpreter with a time limit (see
script_runner.py): a snippet that fails, prints a traceback from our clean-up, never exits, or
leaves a kernel behind fails its test. Every ``python`` block runs; a ``bash`` block runs only
when marked ``run``. An HTML comment right before a block changes how it runs, with marks
separated by ``;``:

- ``<!-- readme-test: server -->``: a server is running at the address the block names
  (``http://127.0.0.1:8000`` is replaced by a plain ``kernelenv serve``'s; the block finds its
  token as a reader's client does, from the server's info file).
- ``<!-- readme-test: notebook -->``: top-level ``await``, run as a notebook cell runs it.
- ``<!-- readme-test: file NAME -->``: saved as NAME for later blocks, not run.
- ``<!-- readme-test: venv NAME -->``: run (or saved) with ``.venv-NAME``'s Python, in a
  working directory of that venv's own (``venv test NAME``: with ``.venv``'s too, as the page's
  reader may have either); the MCP page's blocks run under both majors of the SDK this way.
- ``<!-- readme-test: run -->``: a ``bash`` block that runs (with ``set -euo pipefail``, the
  venv's ``bin`` first on ``PATH``, as with the venv active).
- ``<!-- readme-test: skip (why) -->``: not run; the reason is shown.
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from local_server import start_plain_server, stop
from peers import peer_python
from script_runner import run_script

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
README_ADDRESS = "http://127.0.0.1:8000"
TEST_VENV = "test"  # .venv, the one pytest runs in

# A block, indented or not (Material's content tabs indent theirs), with its marks if any.
_BLOCK = re.compile(
    r"(?:^[ \t]*<!--\s*readme-test:\s*(?P<mark>[^>]*?)\s*-->[ \t]*\n)?"
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^(?P=indent)```",
    re.DOTALL | re.MULTILINE,
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

# Runs a bash block as the reader's shell would, from a Python script so that script_runner
# sees every process it leaves behind.
SHELL = textwrap.dedent('''
    import subprocess, sys

    code = open(sys.argv[0] + ".sh").read()
    sys.exit(subprocess.run(["bash", "-c", "set -euo pipefail\\n" + code]).returncode)
''')


@dataclass
class Block:
    """One code block of a page and how to run it."""

    page: str  # relative to the repository, e.g. docs/tools.md
    line: int
    lang: str
    code: str
    marks: list[str] = field(default_factory=list)
    venv: str = TEST_VENV

    @property
    def id(self) -> str:
        page = self.page.removeprefix("docs/").removesuffix(".md").replace("/", "-")
        suffix = "" if self.venv == TEST_VENV else f"-{self.venv}"
        return f"{page}-line{self.line}{suffix}"

    def mark(self, name: str) -> str | None:
        """The mark starting with ``name`` (``file NAME`` for "file"), or None."""
        return next((m for m in self.marks if m == name or m.startswith(name + " ")), None)

    @property
    def runs(self) -> bool:
        return self.lang == "python" or (self.lang == "bash" and self.mark("run") is not None)


def page_blocks(page: str) -> list[Block]:
    """Every python or bash block of a page, one per venv it runs in."""
    text = (REPO / page).read_text(encoding="utf-8")
    blocks = []
    for match in _BLOCK.finditer(text):
        indent = len(match.group("indent"))
        code = "".join(line[indent:] for line in match.group("code").splitlines(keepends=True))
        marks = [m.strip() for m in (match.group("mark") or "").split(";") if m.strip()]
        line = text.count("\n", 0, match.start("code")) + 1
        venvs = next((m.split()[1:] for m in marks if m.startswith("venv ")), [TEST_VENV])
        for venv in venvs:
            blocks.append(Block(page, line, match.group("lang"), code, marks, venv))
    return blocks


def blocks_of(*pages: str) -> list[Block]:
    """The blocks to run of some pages, in order."""
    return [b for page in pages for b in page_blocks(page) if b.runs or b.mark("file")]


def docs_pages() -> list[str]:
    """Every page of the documentation site, relative to the repository."""
    return sorted(str(p.relative_to(REPO)) for p in DOCS.rglob("*.md"))


def check_marks(blocks: list[Block]) -> None:
    """Each mark is known, and a skip says why."""
    for block in blocks:
        for mark in block.marks:
            assert mark in ("server", "notebook", "run") or mark.startswith(
                ("file ", "venv ", "skip")
            ), f"{block.id}: unknown mark {mark!r}"
            if mark.startswith("skip"):
                assert re.fullmatch(r"skip \(.+\)", mark), f"{block.id}: a skip says why"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One directory for the blocks of a test module, as a reader working through its pages
    has (blocks of another venv get a subdirectory of their own)."""
    return tmp_path_factory.mktemp("pages")


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


def run_block(block: Block, workdir: Path, request: pytest.FixtureRequest) -> None:
    """Run (or save, or skip) one block as its marks say; fail with its output if it fails."""
    if skip := block.mark("skip"):
        pytest.skip(f"{block.id}: {skip}")
    if block.venv != TEST_VENV:
        python = peer_python(block.venv)
        workdir = workdir / block.venv
        workdir.mkdir(exist_ok=True)
    else:
        python = Path(sys.executable)
    if file := block.mark("file"):
        (workdir / file.removeprefix("file ").strip()).write_text(block.code)
        return
    # The scale guide's policy calls a model when one is configured: the tests run it offline.
    source, env = block.code, {"OPENAI_BASE_URL": ""}
    if block.mark("server"):
        url, runtime = request.getfixturevalue("server")
        assert README_ADDRESS in source, "a server block names the README's address"
        source = source.replace(README_ADDRESS, url)
        env["KERNELENV_RUNTIME_DIR"] = str(runtime)
    name = f"block_{block.id.replace('-', '_')}.py"
    if block.lang == "bash":
        (workdir / f"{name}.sh").write_text(source)
        source = SHELL
    elif block.mark("notebook"):
        (workdir / f"{name}.cell").write_text(source)
        source = NOTEBOOK_CELL
    run = run_script(source, workdir, name=name, env=env, python=python)
    assert run.returncode == 0, f"{block.id} failed:\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr, run.stderr
    run.assert_nothing_left()
