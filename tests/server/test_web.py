"""The playground at /web, driven in headless Chromium against a real server on loopback."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import nbformat
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from kernelenv.server.web.routes import STATIC_DIR

TOKEN = "playground-test-token"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Generous: a reset may wait for a kernel to start on a busy machine.
WAIT_MS = 60_000

PLOT_CODE = """\
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(4, 2.4))
ax.plot([1, 3, 2, 5], marker="o")
ax.set_title("a matplotlib figure")
plt.show()"""

HTML_CODE = """\
from IPython.display import HTML, SVG, display
display(HTML("<table id='t'><tr><th>n</th><th>n**2</th></tr><tr><td>3</td><td>9</td></tr></table>"
             "<script>const t = document.getElementById('t');"
             "try { parent.document.title = 'escaped'; t.dataset.parent = 'reached'; }"
             "catch (e) { t.dataset.parent = 'blocked'; }</script>"))
display(SVG('<svg xmlns="http://www.w3.org/2000/svg" width="80" height="24">'
            '<rect width="80" height="24" fill="teal"/></svg>'))
6 * 7"""


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A real kernelenv server with a token, on a free loopback port, in a thread."""
    from kernelenv.server import ServerConfig
    from kernelenv.server.serve import ServerThread

    with ServerThread(ServerConfig(port=0, token=TOKEN, pool_size=2)) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (which never downloads a browser here)."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is missing: run scripts/install-system-deps.sh (Debian 'chromium')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_page(browser: Browser, server_url: str) -> Iterator:
    """Opens the playground in a fresh browser context; fails the test on any script error."""
    contexts, errors = [], []

    def open_(query: str = f"?token={TOKEN}") -> Page:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{server_url}/web{query}")  # as the README says; it redirects to /web/
        return page

    try:
        yield open_
    finally:
        for context in contexts:
            context.close()
    assert not errors, f"script errors on the page: {errors}"


def wait_for_episode(page: Page) -> str:
    """Wait until the page has an open connection and an episode; return the episode id."""
    expect(page.locator("#state-connection")).to_have_text("open", timeout=WAIT_MS)
    expect(page.locator("#state-episode")).to_have_text(re.compile(r"\w{6,}"), timeout=WAIT_MS)
    return page.locator("#state-episode").text_content()


def run_cell(page: Page, code: str) -> None:
    """Put code in the editor, run it with Shift+Enter, wait for its cell to finish."""
    done = page.locator("#history .cell:not([data-status=running])").count()
    editor = page.locator("#code")
    editor.fill(code)
    editor.press("Shift+Enter")
    expect(page.locator("#history .cell:not([data-status=running])")).to_have_count(
        done + 1, timeout=WAIT_MS
    )


def last_cell(page: Page) -> Locator:
    return page.locator("#history .cell").last


def test_page_and_its_files_are_served_without_network_dependencies(server_url: str) -> None:
    with httpx.Client(base_url=server_url) as client:
        redirect = client.get("/web")
        page = client.get("/web/")
        script = client.get("/web/app.js")
        schema_without_token = client.get("/schema")
    assert redirect.status_code == 307 and redirect.headers["location"].endswith("/web/")
    # The page is public (it holds no data); what it talks to needs the token.
    assert page.status_code == 200 and "kernelenv playground" in page.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert schema_without_token.status_code == 401
    for path in STATIC_DIR.iterdir():
        # Everything the page loads ships with the package: no CDN, no remote font.
        assert not re.search(r"https?://", path.read_text()), f"{path.name} refers to the network"


def test_runs_code_and_renders_outputs_like_a_notebook(open_page) -> None:
    page = open_page()
    wait_for_episode(page)
    editor = page.locator("#code")

    # Typing as a person does: Tab indents, Enter keeps the indentation (one more after a
    # colon), Backspace removes a level, Shift+Enter runs.
    editor.click()
    editor.press("Tab")
    assert editor.input_value() == "    "
    editor.press("Backspace")
    page.keyboard.type("def answer():\n")
    page.keyboard.type("print('thinking')\nreturn 42\n")
    page.keyboard.press("Backspace")
    page.keyboard.type("answer()")
    assert editor.input_value() == "def answer():\n    print('thinking')\n    return 42\nanswer()"
    editor.press("Shift+Enter")
    cell = last_cell(page)
    expect(cell).to_have_attribute("data-status", "ok", timeout=WAIT_MS)
    expect(cell.locator("[data-output-type=stream][data-name=stdout]")).to_have_text("thinking\n")
    expect(cell.locator("[data-output-type=execute_result]")).to_contain_text("Out[1]:")
    expect(cell.locator("[data-output-type=execute_result]")).to_contain_text("42")
    assert editor.input_value() == ""  # the editor is ready for the next cell

    run_cell(page, "import sys\nprint('to stderr', file=sys.stderr)")
    expect(last_cell(page).locator("[data-name=stderr]")).to_have_text("to stderr\n")

    run_cell(page, "def inverse(x):\n    return 1 / x\n\ninverse(0)")
    cell = last_cell(page)
    expect(cell).to_have_attribute("data-status", "error")
    error = cell.locator("[data-output-type=error]")
    expect(error).to_have_attribute("data-ename", "ZeroDivisionError")
    expect(error).to_contain_text("Traceback")
    expect(error).to_contain_text("return 1 / x")
    expect(error).to_contain_text("ZeroDivisionError: division by zero")
    expect(cell.locator(".cell-footer")).to_contain_text("exit 1")
    expect(page.locator("#state-exit")).to_have_text("1")

    run_cell(page, PLOT_CODE)
    image = last_cell(page).locator("img[data-mime='image/png']")
    expect(image).to_have_count(1)
    assert image.get_attribute("src").startswith("data:image/png;base64,iVBOR")
    assert image.evaluate("img => img.decode().then(() => img.naturalWidth)") > 100

    run_cell(page, HTML_CODE)
    cell = last_cell(page)
    frame = cell.locator("iframe[data-mime='text/html']")
    expect(frame).to_have_attribute("sandbox", "allow-scripts")
    table = cell.frame_locator("iframe").locator("#t")
    expect(table.locator("td").last).to_have_text("9")
    # Scripts in HTML output run, but in an opaque origin: they cannot reach the page.
    expect(table).to_have_attribute("data-parent", "blocked")
    assert page.title() == "kernelenv playground"
    svg = cell.locator("img[data-mime='image/svg+xml']")
    assert svg.evaluate("img => img.decode().then(() => img.naturalWidth)") == 80
    expect(cell.locator("[data-output-type=execute_result]")).to_contain_text("42")

    expect(page.locator("#state-steps")).to_have_text("5")
    expect(page.locator("#state-exit")).to_have_text("0")
    expect(page.locator("#history .cell")).to_have_count(5)  # the whole history stays,
    assert page.locator("#history").evaluate("h => h.scrollHeight > h.clientHeight")  # scrolls,
    expect(last_cell(page)).to_be_in_viewport()  # and follows the newest step
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-playground.png"))


def test_reset_starts_a_fresh_episode(open_page) -> None:
    page = open_page()
    first_episode = wait_for_episode(page)
    run_cell(page, "secret = 41")
    expect(page.locator("#state-steps")).to_have_text("1")

    page.locator("#reset").click()
    expect(page.locator("#history .cell")).to_have_count(0)
    expect(page.locator("#state-episode")).not_to_have_text(first_episode, timeout=WAIT_MS)
    expect(page.locator("#state-steps")).to_have_text("0")

    run_cell(page, "secret + 1")
    cell = last_cell(page)
    expect(cell.locator("[data-output-type=error]")).to_have_attribute("data-ename", "NameError")
    expect(page.locator("#state-steps")).to_have_text("1")


def test_the_token_comes_from_the_url_or_the_token_field(open_page) -> None:
    page = open_page(query="")
    expect(page.locator("#state-connection")).to_have_text("closed", timeout=WAIT_MS)
    expect(page.locator("#banner")).to_contain_text("token")

    page.locator("#token").fill(TOKEN)
    page.locator("#token").press("Enter")
    wait_for_episode(page)
    expect(page.locator("#banner")).to_be_hidden()
    run_cell(page, "print('authorised')")
    expect(last_cell(page).locator("[data-name=stdout]")).to_have_text("authorised\n")

    # A token given in the URL is kept for the tab but taken out of the address bar.
    page = open_page()
    wait_for_episode(page)
    assert page.url.endswith("/web/")
    assert page.evaluate("sessionStorage.getItem('kernelenv.token')") == TOKEN


def test_downloads_the_episode_as_a_notebook(open_page) -> None:
    page = open_page()
    episode_id = wait_for_episode(page)
    run_cell(page, "print('first')")
    run_cell(page, "1 / 0")

    with page.expect_download() as download_info:
        page.locator("#download").click()
    download = download_info.value
    assert download.suggested_filename == f"{episode_id}.ipynb"
    notebook = nbformat.reads(Path(download.path()).read_text(), as_version=4)
    nbformat.validate(notebook)
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.source for cell in cells] == ["print('first')", "1 / 0"]
    assert cells[0].outputs[0]["text"] == "first\n"
    assert cells[1].outputs[0]["ename"] == "ZeroDivisionError"


def test_picks_a_review_task_submits_and_sees_the_grade(open_page) -> None:
    page = open_page()
    wait_for_episode(page)
    expect(page.locator("#task-select option[value=task_easy_1]")).to_have_count(1)
    page.locator("#task-select").select_option("task_easy_1")

    # The prompt and the pull request are shown; the state names the task.
    expect(page.locator("#state-task")).to_have_text("task_easy_1", timeout=WAIT_MS)
    expect(page.locator("#task-panel")).to_be_visible()
    expect(page.locator("#task-difficulty")).to_have_text("easy")
    expect(page.locator("#task-description")).to_contain_text("submit one review action")
    expect(page.locator("#task-context .diff .add").first).to_be_visible()
    expect(page.locator("#review-panel")).to_be_visible()

    # The agent may explore with code first: the PR's files are in its working directory.
    run_cell(page, "import os\nsorted(os.listdir('pr'))")
    expect(last_cell(page).locator("[data-output-type=execute_result]")).to_contain_text("app")

    page.locator("#review-text").fill(
        "paginate() treats page as 0-based: start = page * page_size skips the first page."
    )
    page.locator("#review-file").fill("app/pagination.py")
    page.locator("#review-issue").select_option("logic")
    page.locator("#review-bug").select_option("logic")
    page.locator("#review-severity").select_option("medium")
    page.locator("#review-line").fill("5")
    page.locator("#review-confidence").fill("0.8")
    page.locator("#review-form button[type=submit]").click()

    cell = page.locator("#history .review-cell")
    expect(cell).to_have_attribute("data-status", "ok", timeout=WAIT_MS)
    expect(cell.locator("[data-output-type=feedback]")).to_contain_text("Feedback")
    expect(cell.locator(".cell-footer")).to_contain_text("reward")
    score = page.locator("#grade-result .score-value")
    expect(score).to_have_attribute("data-score", re.compile(r"0\.\d+"), timeout=WAIT_MS)
    value = float(score.get_attribute("data-score"))
    assert 0 < value < 1  # seed 002's rewards lie strictly inside (0, 1)
    expect(page.locator("#grade-result .components th").first).to_be_visible()
    expect(page.locator("#state-score")).not_to_have_text("—")
    expect(page.locator("#state-steps")).to_have_text("2")
    page.locator("#grade-panel").scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-playground-task.png"))


def test_a_code_task_is_graded_from_the_steps(open_page) -> None:
    page = open_page()
    wait_for_episode(page)
    expect(page.locator("#task-select option[value=functions_easy_palindrome]")).to_have_count(1)
    page.locator("#task-select").select_option("functions_easy_palindrome")
    expect(page.locator("#state-task")).to_have_text("functions_easy_palindrome", timeout=WAIT_MS)
    expect(page.locator("#review-panel")).to_be_hidden()

    run_cell(
        page,
        "def is_palindrome(text):\n"
        "    kept = [c.lower() for c in text if c.isalnum()]\n"
        "    return kept == kept[::-1]",
    )
    page.locator("#grade").click()
    score = page.locator("#grade-result .score-value")
    expect(score).to_have_attribute("data-score", "1", timeout=WAIT_MS)
    expect(page.locator("#grade-result .badge")).to_have_text("passed")


# Prints, then waits (up to a minute) for a file "go" in its working directory, which the test
# writes only once the page shows the first line: "signal seen" proves the page showed the
# output while the cell was still running.
TICKING_CELL = """\
import os, time
for i in range(10):
    print('tick', i, flush=True)
    if i == 0:
        for _ in range(1200):
            if os.path.exists('go'):
                break
            time.sleep(0.05)
        print('signal seen' if os.path.exists('go') else 'no signal', flush=True)
    time.sleep(0.2)"""


def test_a_long_cell_shows_its_output_as_it_streams(open_page) -> None:
    page = open_page()
    wait_for_episode(page)
    run_cell(page, "import os; os.getcwd()")
    result = last_cell(page).locator("[data-output-type=execute_result] [data-mime='text/plain']")
    work_dir = Path(result.text_content().strip().strip("'"))

    editor = page.locator("#code")
    editor.fill(TICKING_CELL)
    editor.press("Shift+Enter")
    cell = last_cell(page)
    stdout = cell.locator("[data-output-type=stream][data-name=stdout]")
    expect(stdout).to_have_text("tick 0\n", timeout=WAIT_MS)
    # Shown while the cell is still running (it waits for the signal below to go on).
    expect(cell).to_have_attribute("data-status", "running")
    expect(cell.locator(".cell-footer")).to_contain_text("live output")
    (work_dir / "go").touch()
    expect(stdout).to_contain_text("tick 3", timeout=WAIT_MS)  # streams keep merging in
    expect(cell).to_have_attribute("data-status", "ok", timeout=WAIT_MS)
    # The observation replaced the preview: one stdout output, with everything.
    expect(stdout).to_have_count(1)
    expect(stdout).to_contain_text("signal seen")
    expect(stdout).to_contain_text("tick 9")


def test_output_frames_can_neither_navigate_nor_reach_the_network(open_page) -> None:
    """Outputs that try to take their frame (or the page) to an attacker's page, or to reach
    the network, reach nothing: a listener on loopback gets no request."""
    import http.server
    import threading

    requests: list[str] = []

    class Listener(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<form>re-enter your token <input name=token></form>")

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    thread = threading.Thread(target=listener.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.server_address[1]}"
    attempts = {
        "script": f"<script>location.href = '{url}/script';</script>",
        "meta": f"<meta http-equiv='refresh' content='0;url={url}/meta'>",
        "open": f"<script>window.open('{url}/open');</script>",
        "top": f"<script>try {{ top.location = '{url}/top'; }} catch (e) {{}}</script>",
        "form": f"<form id=f action='{url}/form' method=post><input name=a value=1></form>"
                "<script>document.getElementById('f').submit();</script>",
        "fetch": f"<script>fetch('{url}/fetch').catch(() => {{}});</script>",
        "image": f"<img src='{url}/image'>",
        "frame": f"<iframe src='{url}/frame'></iframe>",
        "link": f"<a id=a href='{url}/link' target=_top>x</a><script>a.click();</script>",
    }  # fmt: skip
    code = "from IPython.display import HTML, display\n" + "".join(
        f"display(HTML({html!r}))\n" for html in attempts.values()
    )
    try:
        page = open_page()
        wait_for_episode(page)
        run_cell(page, code)
        cell = last_cell(page)
        expect(cell.locator("iframe[data-mime='text/html']")).to_have_count(len(attempts))
        page.wait_for_timeout(3000)  # room for the attempts (none may get through)
        # The playground still works, on its own page.
        assert page.url.endswith("/web/")
        run_cell(page, "print('still here')")
        expect(last_cell(page).locator("[data-name=stdout]")).to_have_text("still here\n")
        assert requests == [], f"requests reached the listener: {requests}"
    finally:
        listener.shutdown()
        listener.server_close()
        thread.join()
