// The kernelenv playground: a browser client of the OpenEnv WebSocket protocol (no build, no deps).

const TOKEN_KEY = "kernelenv.token";
const INDENT = "    ";
const RICH_KEY = "kernelenv"; // where the server puts the rich fields inside metadata
const PR_FIELDS = ["pr_title", "pr_description", "changed_files", "code_snippet"];
// Richest first, as a notebook picks what to show of a MIME bundle.
const MIME_ORDER = [
  "text/html", "image/svg+xml", "image/png", "image/jpeg", "image/gif",
  "text/markdown", "text/latex", "application/json", "text/plain",
];
const ANSI_ESCAPE = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07/g;

const $ = (id) => document.getElementById(id);

// ---- talking to the server ---------------------------------------------------------------------

/** An error frame from the server, a lost connection, or a failed HTTP call. */
class ServerError extends Error {
  constructor(message, code = "") {
    super(message);
    this.code = code;
  }
}

/** One WebSocket session (one episode's kernel). Replies come one per request, in order. */
class EnvSocket {
  constructor(url, onClose) {
    this.url = url;
    this.onClose = onClose;
    this.pending = [];
    this.unsolicited = null;
    this.wasOpen = false;
    this.ws = new WebSocket(url, socketProtocols());
    this.opened = new Promise((resolve, reject) => {
      this.ws.addEventListener("open", () => {
        this.wasOpen = true;
        resolve(this);
      });
      this.ws.addEventListener("close", (event) => {
        const error = this.unsolicited || new ServerError(closeMessage(event), "CLOSED");
        reject(error);
        for (const waiter of this.pending.splice(0)) waiter.reject(error);
        this.onClose(this, error);
      });
    });
    this.opened.catch(() => {}); // the rejection is reported through onClose and request()
    this.ws.addEventListener("message", (event) => this.receive(event.data));
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN;
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.type === "output") {
      // A streamed output of the running step (asked for with `stream: true`): not a reply.
      const current = this.pending[0];
      if (current && current.onOutput) current.onOutput(frame.data || {});
      return;
    }
    const waiter = this.pending.shift();
    if (frame.type === "error") {
      const data = frame.data || {};
      const error = new ServerError(data.message || "server error", data.code || "");
      if (waiter) waiter.reject(error);
      else this.unsolicited = error; // e.g. CAPACITY_REACHED, sent before the socket closes
    } else if (waiter) {
      waiter.resolve(frame);
    }
  }

  /** Send one frame and wait for its reply frame (an error frame rejects). */
  async request(frame, onOutput = null) {
    await this.opened;
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject, onOutput });
      this.ws.send(JSON.stringify(frame));
    });
  }

  close() {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "close" }));
    if (this.isOpen) this.ws.close(1000, "closed by the playground");
  }
}

function closeMessage(event) {
  if (event.code === 1000) return "the session ended";
  const reason = event.reason ? `: ${event.reason}` : "";
  const hint = event.code === 1008 || event.code === 1006
    ? " (is the server running, and is the token right?)" : "";
  return `connection closed (code ${event.code})${reason}${hint}`;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

/** A server URL relative to the page (which lives at <base>/web/), so a path prefix works. */
function serverUrl(path, params = {}) {
  const url = new URL(`../${path}`, window.location.href);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  return url;
}

// Browsers cannot set headers on a WebSocket: the token travels as a subprotocol, which no
// access log records. A token with characters a subprotocol cannot carry goes in ?token=.
const SUBPROTOCOL_TOKEN = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

function socketUrl() {
  const query = token() && !SUBPROTOCOL_TOKEN.test(token()) ? { token: token() } : {};
  const url = serverUrl("ws", query);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function socketProtocols() {
  return token() && SUBPROTOCOL_TOKEN.test(token())
    ? ["kernelenv", `kernelenv.bearer.${token()}`]
    : [];
}

/** GET a server route with the bearer token; returns the Response (throws ServerError if not ok). */
async function fetchServer(path, params = {}) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  let response;
  try {
    response = await fetch(serverUrl(path, params), { headers });
  } catch (error) {
    throw new ServerError(`GET /${path} failed: ${error.message}`, "NETWORK");
  }
  if (!response.ok) {
    let message = response.statusText;
    try {
      const body = await response.json();
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
    } catch {
      // not JSON: keep the status text
    }
    throw new ServerError(`GET /${path}: ${response.status} ${message}`, `HTTP_${response.status}`);
  }
  return response;
}

/**
 * One flat observation from an observation frame's data: OpenEnv's fields, plus the rich
 * fields (outputs, error, status, task fields...) the server carries in `metadata.kernelenv`.
 */
function liftObservation(data) {
  const wire = data.observation || {};
  const metadata = wire.metadata || data.metadata || {};
  const lifted = { ...(metadata[RICH_KEY] || {}), metadata };
  for (const [key, value] of Object.entries(wire)) {
    if (key !== "metadata") lifted[key] = value;
  }
  if (data.reward !== undefined && data.reward !== null) lifted.reward = data.reward;
  if (data.done !== undefined) lifted.done = Boolean(data.done);
  return lifted;
}

// ---- the session: one episode at a time ------------------------------------------------------

const session = {
  socket: null,
  ready: null, // a promise of the current episode (reset done)
  state: {},
  tasks: new Map(),
  recalled: [],
  recallIndex: 0,
};

function setConnection(status) {
  const node = $("state-connection");
  node.textContent = status;
  node.dataset.status = status;
}

function openSocket() {
  if (session.socket) session.socket.close();
  setConnection("connecting");
  const socket = new EnvSocket(socketUrl(), (closed, error) => {
    if (session.socket !== closed) return; // an older socket we replaced
    session.socket = null;
    session.ready = null;
    setConnection("closed");
    // A connection that never opened is reported by the reset that waited for it.
    const normal = error.code === "CLOSED" && /session ended/.test(error.message);
    if (closed.wasOpen && !normal) showBanner(`Disconnected: ${error.message}`);
  });
  socket.opened.then(() => {
    if (session.socket === socket) setConnection("open");
  }, () => {});
  session.socket = socket;
  return socket;
}

/** Start a new episode (on the selected task, if any); the server gives it a fresh kernel. */
function resetEpisode() {
  const taskId = $("task-select").value;
  const socket = session.socket && session.socket.isOpen ? session.socket : openSocket();
  clearHistory();
  const ready = (async () => {
    const reply = await socket.request({ type: "reset", data: taskId ? { task_id: taskId } : {} });
    hideBanner();
    const observation = liftObservation(reply.data);
    showTask(observation);
    await refreshState();
    return observation;
  })();
  ready.catch((error) => {
    showBanner(`Reset failed: ${error.message}`);
    if (session.ready === ready) session.ready = null;
  });
  session.ready = ready;
  return ready;
}

/** Reset from a button or at load: failures are shown in the banner, nothing to await. */
function startEpisode() {
  resetEpisode().catch(() => {});
}

async function ensureEpisode() {
  if (!session.ready || !session.socket || !session.socket.isOpen) {
    if (session.state.episode_id) addNote("The connection was lost: a new episode started.");
    await resetEpisode();
  }
  return session.ready;
}

async function refreshState() {
  if (!session.socket) return;
  const reply = await session.socket.request({ type: "state" });
  session.state = reply.data || {};
  renderState(session.state);
}

function renderState(state) {
  $("state-episode").textContent = state.episode_id || "—";
  $("state-episode").title = state.episode_id || "";
  $("state-steps").textContent = String(state.step_count ?? 0);
  const exit = $("state-exit");
  exit.textContent = state.step_count ? String(state.last_exit_code ?? "—") : "—";
  exit.dataset.exit = state.step_count ? String(state.last_exit_code) : "";
  $("state-task").textContent = state.task_id || "none";
  $("state-score").textContent = state.last_score == null ? "—" : formatScore(state.last_score);
}

/** Run code as one step and render what came back. */
async function runCode(code) {
  const cell = addCodeCell(code);
  try {
    await ensureEpisode();
    // Outputs stream in while the cell runs; the observation then replaces them.
    const reply = await session.socket.request(
      { type: "step", data: { code, stream: true } }, liveOutputs(cell));
    renderObservation(cell, liftObservation(reply.data));
  } catch (error) {
    renderFailure(cell, error);
  }
  await refreshState().catch(() => {});
}

/** Submit the review form as a step (seed 002's action fields) and show the grade. */
async function submitReview(form) {
  const fields = new FormData(form);
  const review = {
    review: fields.get("review"),
    file_path: fields.get("file_path"),
    issue_type: fields.get("issue_type"),
    severity: fields.get("severity"),
    bug_type: fields.get("bug_type"),
    line_number: Number.parseInt(fields.get("line_number"), 10),
    confidence: Number.parseFloat(fields.get("confidence")),
  };
  const cell = addReviewCell(review);
  try {
    await ensureEpisode();
    const reply = await session.socket.request({ type: "step", data: review });
    renderObservation(cell, liftObservation(reply.data));
  } catch (error) {
    renderFailure(cell, error);
  }
  await refreshState().catch(() => {});
  await checkGrade();
}

async function checkGrade() {
  const result = $("grade-result");
  const taskId = session.state.task_id;
  if (!taskId || !session.state.episode_id) return;
  result.replaceChildren(el("p", { className: "note" }, "grading…"));
  try {
    const response = await fetchServer("grader", {
      task_id: taskId,
      episode_id: session.state.episode_id,
    });
    renderGrade(result, await response.json());
  } catch (error) {
    result.replaceChildren(el("p", { className: "failure" }, error.message));
  }
}

async function downloadNotebook() {
  const episodeId = session.state.episode_id;
  if (!episodeId) {
    showBanner("No episode yet: run a step or reset first.");
    return;
  }
  try {
    const response = await fetchServer(`episodes/${encodeURIComponent(episodeId)}.ipynb`);
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: `${episodeId}.ipynb` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (error) {
    showBanner(`Download failed: ${error.message}`);
  }
}

async function loadTasks() {
  const select = $("task-select");
  const note = $("tasks-note");
  let listing;
  try {
    listing = await (await fetchServer("tasks")).json();
  } catch (error) {
    note.textContent = error.code === "HTTP_404"
      ? "This server has no tasks."
      : `Could not load tasks: ${error.message}`;
    note.hidden = false;
    if (error.code === "HTTP_401") {
      showBanner("This server needs a token: type it in the token field (top right).");
    }
    return;
  }
  const tasks = listing.tasks || [];
  for (const task of tasks) {
    session.tasks.set(task.id, task);
    select.append(el("option", { value: task.id },
      `${task.id}: ${task.title} (${task.family}, ${task.difficulty})`));
  }
  note.textContent = `${tasks.length} task${tasks.length === 1 ? "" : "s"} on this server.`;
  note.hidden = false;
}

// ---- rendering -----------------------------------------------------------------------------

/** Create an element with properties (attributes for data-* and aria-*) and children. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

/** Show a problem above the page (several problems: one line each, until the next reset). */
function showBanner(message) {
  const banner = $("banner");
  if (banner.hidden) banner.replaceChildren();
  if ([...banner.children].some((line) => line.textContent === message)) return;
  banner.append(el("div", {}, message));
  banner.hidden = false;
}

function hideBanner() {
  $("banner").hidden = true;
}

function formatScore(score) {
  return Number(score).toFixed(3).replace(/0+$/, "").replace(/\.$/, ".0");
}

function clearHistory() {
  $("history").replaceChildren();
  $("grade-result").replaceChildren();
}

function scrollToEnd(node) {
  node.scrollIntoView({ block: "end" });
}

function nearBottom(scroller) {
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
}

function addNote(text) {
  const note = el("li", { className: "cell note-cell" }, text);
  $("history").append(note);
  return note;
}

function addCodeCell(code) {
  const cell = el(
    "li",
    { className: "cell", "data-status": "running" },
    el(
      "div",
      { className: "cell-input" },
      el("span", { className: "prompt" }, "In [*]:"),
      el("pre", { className: "code" }, code),
    ),
    el("div", { className: "cell-outputs" }),
    el("div", { className: "cell-footer" }, "running…"),
  );
  $("history").append(cell);
  scrollToEnd(cell);
  return cell;
}

function addReviewCell(review) {
  const summary = el("dl", { className: "review-summary" });
  for (const [key, value] of Object.entries(review)) {
    summary.append(el("dt", {}, key), el("dd", {}, String(value)));
  }
  const cell = el(
    "li",
    { className: "cell review-cell", "data-status": "running" },
    el(
      "div",
      { className: "cell-input" },
      el("span", { className: "prompt" }, "Review:"),
      summary,
    ),
    el("div", { className: "cell-outputs" }),
    el("div", { className: "cell-footer" }, "submitting…"),
  );
  $("history").append(cell);
  scrollToEnd(cell);
  return cell;
}

/** Fill a cell with a step's observation, as a notebook shows it. */
function renderObservation(cell, observation) {
  const count = observation.execution_count;
  cell.querySelector(".prompt").textContent = cell.classList.contains("review-cell")
    ? "Review:" : `In [${count ?? " "}]:`;
  const outputs = cell.querySelector(".cell-outputs");
  outputs.replaceChildren(); // the streamed preview, if any, gives way to the record
  // Outputs as a notebook stores them; plain stdout/stderr when a step has none (a review).
  const items = observation.outputs?.length ? observation.outputs : fallbackOutputs(observation);
  for (const output of items) {
    const node = renderOutput(output);
    if (node) outputs.append(node);
  }
  if (observation.previous_feedback) {
    outputs.append(el("div", { className: "output feedback", "data-output-type": "feedback" },
      el("strong", {}, "Feedback: "), observation.previous_feedback));
  }
  const status = observation.status || (observation.exit_code ? "error" : "ok");
  cell.dataset.status = status;
  cell.dataset.exitCode = String(observation.exit_code ?? "");
  const facts = [`exit ${observation.exit_code ?? "?"}`, status];
  if (observation.duration_s > 0) facts.push(formatDuration(observation.duration_s));
  if (observation.reward !== undefined && observation.reward !== null) {
    facts.push(`reward ${formatScore(observation.reward)}`);
  }
  if (observation.kernel_restarted) facts.push("kernel restarted: earlier state is gone");
  if (observation.done) facts.push("episode done");
  if (observation.output_truncated) facts.push("output truncated");
  cell.querySelector(".cell-footer").textContent = facts.join(" · ");
  scrollToEnd(cell);
}

/**
 * A handler of a running cell's streamed output events: appends, merges stream text,
 * clears (now or, with `wait`, at the next output) and updates displays by id, as a
 * notebook applies IOPub messages.
 */
function liveOutputs(cell) {
  const outputs = cell.querySelector(".cell-outputs");
  let clearBeforeNext = false;
  return (event) => {
    if (event.kind === "clear_output") {
      if (event.wait) clearBeforeNext = true;
      else outputs.replaceChildren();
      return;
    }
    const output = event.output;
    if (!output) return;
    if (event.kind === "update_display") {
      for (const node of outputs.querySelectorAll("[data-display-id]")) {
        if (node.dataset.displayId !== event.display_id) continue;
        const fresh = renderOutput(output);
        if (fresh) {
          fresh.dataset.displayId = event.display_id;
          node.replaceWith(fresh);
        }
      }
      return;
    }
    if (clearBeforeNext) {
      outputs.replaceChildren();
      clearBeforeNext = false;
    }
    const follow = nearBottom($("history"));
    const last = outputs.lastElementChild;
    if (output.output_type === "stream" && last && last.dataset.outputType === "stream"
        && last.dataset.name === output.name) {
      last.rawText += joined(output.text); // merged as a notebook merges streams
      last.textContent = terminalText(last.rawText);
    } else {
      const node = renderOutput(output);
      if (!node) return;
      if (output.output_type === "stream") node.rawText = joined(output.text);
      if (event.display_id) node.dataset.displayId = event.display_id;
      outputs.append(node);
    }
    cell.querySelector(".cell-footer").textContent = "running… (live output)";
    if (follow) scrollToEnd(cell);
  };
}

function renderFailure(cell, error) {
  cell.dataset.status = "failed";
  cell.querySelector(".cell-outputs").append(
    el("pre", { className: "output failure", "data-output-type": "server-error" },
      error.code ? `${error.code}: ${error.message}` : error.message),
  );
  cell.querySelector(".cell-footer").textContent = "not run";
}

function formatDuration(seconds) {
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
}

/** Outputs from the plain fields (a review step, or a server that sends only OpenEnv's). */
function fallbackOutputs(observation) {
  const outputs = [];
  if (observation.stdout) outputs.push({ output_type: "stream", name: "stdout", text: observation.stdout });
  if (observation.stderr) outputs.push({ output_type: "stream", name: "stderr", text: observation.stderr });
  return outputs;
}

function joined(value) {
  return Array.isArray(value) ? value.join("") : String(value ?? "");
}

/** What a terminal would show: ANSI codes removed, carriage returns overwrite the line. */
function terminalText(text) {
  return text
    .replace(ANSI_ESCAPE, "")
    .split("\n")
    .map((line) => {
      const parts = line.split("\r");
      while (parts.length > 1 && parts[parts.length - 1] === "") parts.pop();
      return parts[parts.length - 1];
    })
    .join("\n");
}

/** One nbformat v4 output as a DOM node. */
function renderOutput(output) {
  const type = output.output_type;
  if (type === "stream") {
    return el("pre", { className: `output stream ${output.name}`, "data-output-type": "stream",
      "data-name": output.name }, terminalText(joined(output.text)));
  }
  if (type === "error") {
    const traceback = (output.traceback || []).map(joined).join("\n");
    return el("pre", { className: "output error", "data-output-type": "error",
      "data-ename": output.ename }, terminalText(traceback || `${output.ename}: ${output.evalue}`));
  }
  if (type === "execute_result" || type === "display_data") {
    const node = renderBundle(output.data || {});
    const wrapper = el("div", { className: `output ${type}`, "data-output-type": type });
    if (type === "execute_result") {
      wrapper.append(el("span", { className: "prompt out" }, `Out[${output.execution_count ?? " "}]:`));
    }
    wrapper.append(node);
    return wrapper;
  }
  return null;
}

/** The richest representation of a MIME bundle that the page can show safely. */
function renderBundle(data) {
  const mime = MIME_ORDER.find((candidate) => candidate in data);
  if (mime === undefined) {
    return el("pre", { className: "mime unknown" }, `[${Object.keys(data).join(", ")}]`);
  }
  const value = data[mime];
  switch (mime) {
    case "text/html":
      return htmlFrame(joined(value));
    case "image/svg+xml":
      // As an <img>, an SVG cannot run scripts or reach the page.
      return el("img", {
        className: "mime image", alt: "SVG output", "data-mime": mime,
        src: `data:image/svg+xml;charset=utf-8,${encodeURIComponent(joined(value))}`,
      });
    case "image/png":
    case "image/jpeg":
    case "image/gif":
      return el("img", {
        className: "mime image", alt: `${mime} output`, "data-mime": mime,
        src: `data:${mime};base64,${joined(value).replace(/\s/g, "")}`,
      });
    case "application/json":
      return el("pre", { className: "mime", "data-mime": mime }, JSON.stringify(value, null, 2));
    default:
      return el("pre", { className: "mime", "data-mime": mime }, terminalText(joined(value)));
  }
}

// The frame's policy forbids network access; its sandbox gives it an opaque origin, so its
// scripts cannot see the page, the token or the server, and it may neither open windows,
// submit forms nor navigate the page. Given as the iframe's csp attribute too (CSP Embedded
// Enforcement), the policy binds every document the frame holds: a navigation of the frame
// itself (a script, a meta refresh) to a page that does not take the policy is blocked.
// Its one message is its height.
const FRAME_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; " +
  "script-src 'unsafe-inline'; font-src data:; form-action 'none'; frame-src 'none'; " +
  "base-uri 'none'";
const FRAME_HEAD = [
  `<meta http-equiv="Content-Security-Policy" content="${FRAME_POLICY}">`,
  "<style>body{margin:0;font:14px system-ui,sans-serif;overflow:auto}",
  "table{border-collapse:collapse}th,td{padding:2px 8px;border-bottom:1px solid #ddd;",
  "text-align:right}</style>",
].join("");
const FRAME_TAIL = [
  "<script>(()=>{const post=()=>parent.postMessage({kernelenvFrameHeight:",
  "document.documentElement.scrollHeight},'*');",
  "new ResizeObserver(post).observe(document.documentElement);post();})()</script>",
].join("");

function htmlFrame(html) {
  const frame = el("iframe", {
    className: "mime html",
    sandbox: "allow-scripts",
    title: "HTML output",
    "data-mime": "text/html",
  });
  frame.setAttribute("csp", FRAME_POLICY); // before it loads anything (on insertion)
  frame.srcdoc = `<!doctype html><html><head>${FRAME_HEAD}</head><body>${html}${FRAME_TAIL}</body></html>`;
  return frame;
}

window.addEventListener("message", (event) => {
  const height = event.data && event.data.kernelenvFrameHeight;
  if (typeof height !== "number") return;
  const history = $("history");
  const follow = nearBottom(history); // keep the newest output in view as frames grow
  for (const frame of document.querySelectorAll("iframe.html")) {
    if (frame.contentWindow === event.source) {
      frame.style.height = `${Math.min(Math.max(height, 20), 600) + 4}px`;
    }
  }
  if (follow) history.scrollTop = history.scrollHeight;
});

function showTask(observation) {
  const panel = $("task-panel");
  const reviewPanel = $("review-panel");
  const gradePanel = $("grade-panel");
  if (!observation.task_id) {
    panel.hidden = reviewPanel.hidden = gradePanel.hidden = true;
    return;
  }
  const context = observation.task_context || {};
  const listed = session.tasks.get(observation.task_id) || {};
  $("task-title").textContent = listed.title || observation.task_id;
  const difficulty = observation.difficulty || listed.difficulty || "";
  $("task-difficulty").textContent = difficulty;
  $("task-difficulty").dataset.difficulty = difficulty;
  $("task-description").replaceChildren(...renderProse(observation.task_description || ""));
  $("task-context").replaceChildren(...renderContext(context));
  panel.hidden = false;
  gradePanel.hidden = false;
  const isReview = listed.action === "review"; // as /tasks says: a review or code
  $("grade-note").textContent = isReview
    ? "The grade of your last review."
    : "Grading replays your steps in fresh kernels against hidden checks.";
  reviewPanel.hidden = !isReview;
  if (isReview) {
    $("review-files").replaceChildren(
      ...changedFiles(context.changed_files).map((path) => el("option", { value: path })),
    );
  }
}

/** Task prompts are light Markdown: paragraphs, **bold** and `code` (built as DOM, never HTML). */
function renderProse(text) {
  return text.split(/\n\s*\n/).filter((part) => part.trim()).map((part) => {
    const paragraph = el("p");
    const pieces = part.replace(/\s*\n\s*/g, " ").split(/(\*\*[^*]+\*\*|`[^`]+`)/);
    for (const piece of pieces) {
      if (piece.startsWith("**") && piece.endsWith("**") && piece.length > 4) {
        paragraph.append(el("strong", {}, piece.slice(2, -2)));
      } else if (piece.startsWith("`") && piece.endsWith("`") && piece.length > 2) {
        paragraph.append(el("code", {}, piece.slice(1, -1)));
      } else {
        paragraph.append(piece);
      }
    }
    return paragraph;
  });
}

function changedFiles(value) {
  if (Array.isArray(value)) return value.map(String);
  return String(value || "").split(/[\s,]+/).filter(Boolean);
}

function renderContext(context) {
  const nodes = [];
  if (context.pr_title) nodes.push(el("h3", { className: "pr-title" }, context.pr_title));
  if (context.pr_description) {
    nodes.push(el("div", { className: "prose pr-description" }, ...renderProse(String(context.pr_description))));
  }
  if (context.changed_files) {
    nodes.push(el("p", { className: "files" }, "Changed: ",
      ...changedFiles(context.changed_files).map((path) => el("code", {}, path))));
  }
  if (context.code_snippet) nodes.push(renderDiff(String(context.code_snippet)));
  for (const [key, value] of Object.entries(context)) {
    if (PR_FIELDS.includes(key) || value === null || value === "") continue;
    const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
    nodes.push(el("details", {}, el("summary", {}, key), el("pre", {}, text)));
  }
  return nodes;
}

function renderDiff(diff) {
  const pre = el("pre", { className: "diff" });
  for (const line of diff.split("\n")) {
    let kind = "";
    if (line.startsWith("+++") || line.startsWith("---")) kind = "file";
    else if (line.startsWith("+")) kind = "add";
    else if (line.startsWith("-")) kind = "del";
    else if (line.startsWith("@@")) kind = "hunk";
    pre.append(el("span", { className: kind }, line || " ")); // display: block, one per line
  }
  return pre;
}

function renderGrade(container, grade) {
  const nodes = [
    el("div", { className: "score" },
      el("span", { className: "score-value", "data-score": String(grade.score) },
        formatScore(grade.score)),
      el("meter", { min: 0, max: 1, value: grade.score, low: 0.5, high: 0.9, optimum: 1 })),
    el("span", { className: `badge ${grade.passed ? "passed" : "failed"}` },
      grade.passed ? "passed" : "not passed"),
  ];
  if (grade.feedback) nodes.push(el("p", { className: "prose feedback" }, grade.feedback));
  const components = Object.entries(grade.components || {});
  if (components.length) {
    const table = el("table", { className: "components" });
    for (const [name, value] of components) {
      table.append(el("tr", {}, el("th", {}, name), el("td", {}, formatScore(value))));
    }
    nodes.push(table);
  }
  container.replaceChildren(...nodes);
}

// ---- the editor: a textarea that behaves like a code cell ------------------------------------

function insertText(area, text) {
  // execCommand keeps the browser's undo history; setRangeText is the fallback.
  if (!document.execCommand("insertText", false, text)) {
    area.setRangeText(text, area.selectionStart, area.selectionEnd, "end");
  }
}

function currentLine(area) {
  const start = area.value.lastIndexOf("\n", area.selectionStart - 1) + 1;
  return { start, text: area.value.slice(start, area.selectionStart) };
}

function dedent(area) {
  const { start, text } = currentLine(area);
  const remove = Math.min(INDENT.length, text.length - text.trimStart().length);
  if (!remove) return;
  area.setSelectionRange(start, start + remove);
  if (!document.execCommand("delete")) area.setRangeText("", start, start + remove, "end");
}

function fitEditor(area) {
  area.style.height = "auto";
  area.style.height = `${Math.min(area.scrollHeight + 2, window.innerHeight * 0.45)}px`;
}

function submitEditor() {
  const area = $("code");
  const code = area.value;
  if (!code.trim()) return;
  session.recalled.push(code);
  session.recallIndex = session.recalled.length;
  area.value = "";
  fitEditor(area);
  runCode(code);
}

function onEditorKey(event) {
  const area = event.currentTarget;
  if (event.key === "Enter" && (event.shiftKey || event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    submitEditor();
  } else if (event.key === "Tab" && !event.altKey && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    if (event.shiftKey) dedent(area);
    else insertText(area, INDENT);
  } else if (event.key === "Backspace" && area.selectionStart === area.selectionEnd) {
    // In leading whitespace, one press removes one indentation level.
    const { text } = currentLine(area);
    if (text.length && !text.trim() && text.length % INDENT.length === 0) {
      event.preventDefault();
      dedent(area);
    }
  } else if (event.key === "Enter") {
    // Keep the indentation, one level more after a colon, as an editor for Python does.
    event.preventDefault();
    const { text } = currentLine(area);
    const indent = text.match(/^\s*/)[0] + (text.trimEnd().endsWith(":") ? INDENT : "");
    insertText(area, `\n${indent}`);
  } else if (event.key === "Escape") {
    area.blur(); // Tab indents here, so Escape is the way out for keyboard users
  } else if (event.ctrlKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
    event.preventDefault();
    const step = event.key === "ArrowUp" ? -1 : 1;
    const index = Math.min(Math.max(session.recallIndex + step, 0), session.recalled.length);
    session.recallIndex = index;
    area.value = session.recalled[index] ?? "";
  }
  requestAnimationFrame(() => fitEditor(area));
}

// ---- wiring ---------------------------------------------------------------------------------

function takeTokenFromUrl() {
  const url = new URL(window.location.href);
  if (!url.searchParams.has("token")) return;
  sessionStorage.setItem(TOKEN_KEY, url.searchParams.get("token"));
  url.searchParams.delete("token"); // keep it out of the address bar and the history
  window.history.replaceState(null, "", url);
}

function main() {
  takeTokenFromUrl();
  $("token").value = token();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    session.tasks.clear();
    $("task-select").replaceChildren(el("option", { value: "" }, "Free play (no task)"));
    openSocket();
    startEpisode();
    loadTasks();
  });
  const area = $("code");
  area.addEventListener("keydown", onEditorKey);
  area.addEventListener("input", () => fitEditor(area));
  $("editor").addEventListener("submit", (event) => {
    event.preventDefault();
    submitEditor();
  });
  // Every reset (also on the same connection) gives the episode a fresh kernel.
  $("reset").addEventListener("click", startEpisode);
  $("task-select").addEventListener("change", startEpisode);
  $("download").addEventListener("click", downloadNotebook);
  $("grade").addEventListener("click", checkGrade);
  $("review-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submitReview(event.currentTarget);
  });
  startEpisode();
  loadTasks();
  area.focus();
}

main();
