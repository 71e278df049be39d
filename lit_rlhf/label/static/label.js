// lit-rlhf label: the labeling page. Plain JS, no build step.
// Untrusted model text is only ever placed with textContent (never innerHTML), so a response that
// contains <script>, HTML or markdown is shown exactly as written.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function api(method, path, body) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.headers["X-CSRF-Token"] = csrf();
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {  // the browser's "Failed to fetch": no answer at all
    throw new ApiError(0, "Cannot reach the labeling server (network down, or the server stopped). Your work on this page is kept: check the connection, then press the button again.");
  }
  let data = {};
  try { data = await response.json(); } catch (e) { /* an empty or non-JSON error body */ }
  if (!response.ok) {
    let message = data.error || `${response.status} ${response.statusText}`;
    if (response.status >= 500) message = `The server failed (${response.status}). Try again in a moment; if it keeps failing, tell whoever runs the labeling server.`;
    throw new ApiError(response.status, message);
  }
  return data;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// Characters that reorder or hide text (bidi controls, zero-width characters): model output could use
// them to make a labeler read something other than what is there. They are never put in the page as
// characters; each shows as a marked code point instead.
const HIDDEN = {
  0x200B: "ZWSP", 0x200C: "ZWNJ", 0x200D: "ZWJ", 0x200E: "LRM", 0x200F: "RLM", 0x2060: "WJ", 0xFEFF: "BOM",
  0x202A: "LRE", 0x202B: "RLE", 0x202C: "PDF", 0x202D: "LRO", 0x202E: "RLO",
  0x2066: "LRI", 0x2067: "RLI", 0x2068: "FSI", 0x2069: "PDI", 0x061C: "ALM", 0x00AD: "SHY",
};
const HIDDEN_RE = /[\u200B-\u200F\u2060\uFEFF\u202A-\u202E\u2066-\u2069\u061C\u00AD]/g;

// Place untrusted text in node: literal text, hidden characters as visible marks. Returns how many.
function setVisibleText(node, text) {
  node.replaceChildren();
  let last = 0, count = 0;
  for (const match of text.matchAll(HIDDEN_RE)) {
    if (match.index > last) node.append(document.createTextNode(text.slice(last, match.index)));
    const code = match[0].codePointAt(0);
    const hex = code.toString(16).toUpperCase().padStart(4, "0");
    node.append(el("span", { class: "cp", text: `U+${hex} ${HIDDEN[code]}`, title: `Hidden character U+${hex} (${HIDDEN[code]}) in the text: shown here, not applied` }));
    last = match.index + match[0].length;
    count += 1;
  }
  if (last < text.length) node.append(document.createTextNode(text.slice(last)));
  return count;
}

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("aria-") || key.startsWith("data-") || key === "role" || key === "tabindex" || key === "title") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

// ------------------------------------------------------------------------------------------------
// Login page

function setupLogin() {
  const form = document.getElementById("login-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = document.getElementById("login-name");
    const token = document.getElementById("login-token");
    const body = name ? { name: name.value } : { token: token.value };
    try {
      await api("POST", "/api/login", body);
      window.location.reload();
    } catch (e) {
      document.getElementById("login-error").textContent = e.message;
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Labeling page state: the item, the card order (response indices, best first), tied slots, scores, flags.
// Side by side ("pairs" mode) the two cards stay put (left, right) and `choice` holds the verdict.

const state = {
  mode: "rank", flags: {}, item: null, revision: 0, order: [], tied: new Set(), scores: {}, flagged: {},
  choice: null, selected: 0, history: [], editing: false, busy: false,
};

const pairs = () => state.mode === "pairs";

function loadItem(payload) {
  const task = document.getElementById("task");
  const done = document.getElementById("done");
  renderProgress(payload.progress);
  state.item = payload.item;
  window.scrollTo(0, 0);  // a new item starts at its prompt, wherever the last one was scrolled to
  if (!payload.item) {
    task.hidden = true;
    done.hidden = false;
    return;
  }
  task.hidden = false;
  done.hidden = true;
  const judgment = payload.judgment;
  const k = payload.item.responses.length;
  state.revision = judgment ? judgment.revision : 0;
  state.tied = new Set();
  state.scores = {};
  state.flagged = {};
  state.choice = null;
  state.selected = 0;
  state.order = payload.item.responses.map((r) => r.index);
  if (judgment && judgment.ranking) {
    if (pairs()) {
      state.choice = judgment.ranking.length === 1 ? "tie" : judgment.ranking[0][0] === 0 ? "left" : "right";
    } else {
      state.order = judgment.ranking.flat();
      let position = 0;
      for (const group of judgment.ranking) {  // a tie group of n occupies n slots; all but its first are tied
        for (let i = 1; i < group.length; i++) state.tied.add(position + i);
        position += group.length;
      }
    }
    for (let i = 0; i < k; i++) {
      if (judgment.scores[i] !== null) state.scores[i] = judgment.scores[i];
      state.flagged[i] = new Set(judgment.flags[i]);
    }
  }
  for (let i = 0; i < k; i++) if (!state.flagged[i]) state.flagged[i] = new Set();
  document.getElementById("rewrite").value = (judgment && judgment.rewrite) || "";
  const hiddenInPrompt = setVisibleText(document.getElementById("prompt"), payload.item.prompt);
  document.getElementById("item-meta").textContent = `· item ${payload.item.id} · ${k} responses` +
    (hiddenInPrompt ? ` · ${hiddenInPrompt} hidden character${hiddenInPrompt > 1 ? "s" : ""} shown as marks` : "");
  const editing = document.getElementById("editing");
  editing.hidden = !state.editing;
  if (state.editing) {
    const what = judgment && judgment.status === "skipped" ? "an item you skipped" : "your earlier judgment";
    document.getElementById("editing-text").textContent = `Changing ${what} (revision ${state.revision}).`;
  }
  setStatus("");
  renderCards();
  selectCard(0);  // keyboard users start on the first card
}

function letterOf(index) {
  const position = state.item.responses.findIndex((r) => r.index === index);
  return String.fromCharCode(65 + position);
}

function textOf(index) {
  return state.item.responses.find((r) => r.index === index).text;
}

// Tie groups, best first: a tie belongs to a slot (position), not to the card that happens to sit in it.
function groups() {
  if (pairs()) return { left: [[0], [1]], right: [[1], [0]], tie: [[0, 1]] }[state.choice];
  const result = [];
  state.order.forEach((index, position) => {
    if (position > 0 && state.tied.has(position)) result[result.length - 1].push(index);
    else result.push([index]);
  });
  return result;
}

function renderCards() {
  const list = document.getElementById("cards");
  list.classList.toggle("pairs", pairs());
  list.replaceChildren();
  let rank = 0;
  state.order.forEach((index, position) => {
    const tied = !pairs() && position > 0 && state.tied.has(position);
    if (!tied) rank += 1;
    list.append(buildCard(index, position, rank, tied));
  });
  renderChoice();
  selectCard(Math.min(state.selected, state.order.length - 1), false);
  requestAnimationFrame(markLongCards);
}

function buildCard(index, position, rank, tied) {
  const card = el("li", { class: "card" + (tied ? " tied" : ""), tabindex: "-1", "data-index": String(index), "data-position": String(position) });
  const text = el("div", { class: "text" });
  const hidden = setVisibleText(text, textOf(index));  // literal text: never parsed as HTML
  const warning = hidden ? el("span", { class: "hidden-warning", title: "Bidi controls or zero-width characters: shown as marked code points" },
    [`⚠ ${hidden}`, el("span", { class: "wide-only", text: ` hidden character${hidden > 1 ? "s" : ""}` })]) : "";
  let head;
  if (pairs()) {
    const side = position === 0 ? "Left" : "Right";
    card.setAttribute("aria-label", `${side} response`);
    head = el("div", { class: "card-head" }, [el("span", { class: "rank", text: position === 0 ? "L" : "R" }), el("span", { class: "letter", text: `${side} response` }), el("span", { class: "spacer" }), warning]);
  } else {
    card.setAttribute("aria-label", `Rank ${rank}${tied ? " (tied)" : ""}: response ${letterOf(index)}`);
    const tieButton = el("button", { type: "button", class: "tie" + (tied ? " on" : ""), text: tied ? "= tied" : "= tie", title: "Tie this place with the one above (=)", "aria-pressed": String(tied) });
    tieButton.disabled = position === 0;
    tieButton.addEventListener("click", () => { toggleTie(position); });
    const up = el("button", { type: "button", class: "move", text: "▲", title: "Move up (Shift+↑)", "aria-label": "Move up" });
    up.disabled = position === 0;
    up.addEventListener("click", () => moveCard(position, -1));
    const down = el("button", { type: "button", class: "move", text: "▼", title: "Move down (Shift+↓)", "aria-label": "Move down" });
    down.disabled = position === state.order.length - 1;
    down.addEventListener("click", () => moveCard(position, +1));
    head = el("div", { class: "card-head" }, [
      el("span", { class: "grip", text: "⠿", "aria-hidden": "true", title: "Drag to reorder" }),
      el("span", { class: "rank", text: tied ? `=${rank}` : String(rank) }),
      el("span", { class: "letter", text: `Response ${letterOf(index)}` }),
      warning,
      el("span", { class: "spacer" }),
      tieButton, up, down,
    ]);
    head.addEventListener("pointerdown", (event) => startDrag(event, card));
  }
  const more = el("button", { type: "button", class: "more", text: "Show all ▾", "aria-expanded": "false" });
  more.hidden = true;
  more.addEventListener("click", (event) => {
    event.stopPropagation();
    const open = card.classList.toggle("expanded");
    more.textContent = open ? "Show less ▴" : "Show all ▾";
    more.setAttribute("aria-expanded", String(open));
  });
  const footer = el("div", { class: "card-foot" }, [buildScore(index), buildFlags(index)]);
  card.append(head, text, more, footer);
  card.addEventListener("click", () => selectCard(Number(card.dataset.position), false));
  return card;
}

// Long responses collapse to a fixed height with a "Show all" button, so K cards fit on a screen.
function markLongCards() {
  document.querySelectorAll("#cards .card").forEach((card) => {
    const text = card.querySelector(".text");
    const long = card.classList.contains("expanded") || text.scrollHeight > text.clientHeight + 2;
    card.classList.toggle("long", long);
    card.querySelector(".more").hidden = !long;
  });
}

function renderChoice() {
  const bar = document.getElementById("choice");
  if (!bar) return;
  bar.hidden = !pairs();
  bar.querySelectorAll("button[data-choice]").forEach((button) => {
    const on = button.dataset.choice === state.choice;
    button.classList.toggle("on", on);
    button.setAttribute("aria-pressed", String(on));
  });
  if (pairs()) document.getElementById("submit").textContent = "Submit verdict";
}

function choose(choice) {
  state.choice = state.choice === choice ? null : choice;
  renderChoice();
}

function buildScore(index) {
  const group = el("div", { class: "score", role: "radiogroup", "aria-label": "Overall score, 1 (bad) to 7 (great)" });
  group.append(el("span", { class: "caption", text: "Score" }));
  const buttons = el("span", { class: "score-buttons" });
  for (let value = 1; value <= 7; value++) {
    const on = state.scores[index] === value;
    const button = el("button", { type: "button", class: on ? "on" : "", text: String(value), role: "radio", "aria-checked": String(on), title: `Score ${value} (Shift+${value})` });
    button.addEventListener("click", (event) => { event.stopPropagation(); setScore(index, value); });
    buttons.append(button);
  }
  group.append(buttons);
  return group;
}

function buildFlags(index) {
  const count = state.flagged[index].size;
  const details = el("details", { class: "flags" });
  details.append(el("summary", { text: count ? `Flags (${count})` : "Flags" }));
  const box = el("div", { class: "flag-list" });
  for (const [key, label] of Object.entries(state.flags)) {
    const input = el("input", { type: "checkbox", checked: state.flagged[index].has(key) });
    input.addEventListener("change", () => {
      if (input.checked) state.flagged[index].add(key); else state.flagged[index].delete(key);
      details.querySelector("summary").textContent = state.flagged[index].size ? `Flags (${state.flagged[index].size})` : "Flags";
    });
    box.append(el("label", {}, [input, document.createTextNode(" " + label)]));
  }
  details.append(box);
  return details;
}

function selectCard(position, focus = true) {
  const cards = document.querySelectorAll("#cards .card");
  if (!cards.length) return;
  state.selected = Math.max(0, Math.min(position, cards.length - 1));
  cards.forEach((card, i) => card.classList.toggle("selected", i === state.selected));
  if (focus) cards[state.selected].focus({ preventScroll: false });
}

// Moving a card changes which response sits in which slot; the slots' ties stay where they are.
function moveCard(position, delta) {
  if (pairs()) return;
  const target = position + delta;
  if (target < 0 || target >= state.order.length) return;
  const [index] = state.order.splice(position, 1);
  state.order.splice(target, 0, index);
  state.selected = target;
  renderCards();
  selectCard(target);
}

function toggleTie(position) {
  if (pairs()) { choose("tie"); return; }
  if (position === 0) return;
  if (state.tied.has(position)) state.tied.delete(position); else state.tied.add(position);
  state.selected = position;
  renderCards();
  selectCard(position);
}

function setScore(index, value) {
  if (state.scores[index] === value) delete state.scores[index]; else state.scores[index] = value;
  const position = state.order.indexOf(index);
  state.selected = position;
  renderCards();
  selectCard(position);
}

// Drag and drop with pointer events (mouse, pen and touch alike): the dragged card moves through the
// list as the pointer passes the middle of its neighbours. The listeners sit on the window, not on the
// card: moving a node in the DOM drops its pointer capture. Near the top or bottom of the window the
// page scrolls on its own, faster the closer the pointer is to the edge (up to ~3000 px/s), so the top
// of a long K = 9 item is about a second away; the card follows the pointer while the page scrolls.
const EDGE_PX = 90, MAX_SCROLL_PX_PER_S = 3000;

function startDrag(event, card) {
  if (event.button !== 0 || event.target.closest("button")) return;
  event.preventDefault();
  const list = document.getElementById("cards");
  card.classList.add("dragging");
  let pointerY = event.clientY, frame = null, last = null;
  const place = () => {
    const others = [...list.children].filter((c) => c !== card);
    const before = others.find((c) => { const box = c.getBoundingClientRect(); return pointerY < box.top + box.height / 2; });
    if (before) { if (card.nextElementSibling !== before) list.insertBefore(card, before); }
    else if (list.lastElementChild !== card) list.append(card);
  };
  const topEdge = () => Math.max(0, document.querySelector(".bar").getBoundingClientRect().bottom);
  const bottomEdge = () => { const bar = document.querySelector(".dock"); return Math.min(window.innerHeight, bar ? bar.getBoundingClientRect().top : window.innerHeight); };
  const tick = (now) => {
    frame = null;
    const dt = last === null ? 16 : Math.min(50, now - last);
    last = now;
    const up = topEdge() + EDGE_PX - pointerY, down = pointerY - (bottomEdge() - EDGE_PX);
    const depth = Math.max(up, down);
    if (depth <= 0) { last = null; return; }
    const speed = MAX_SCROLL_PX_PER_S * Math.min(1, 0.25 + depth / EDGE_PX);
    window.scrollBy(0, (up > 0 ? -1 : 1) * Math.max(1, Math.round((speed * dt) / 1000)));
    place();
    frame = requestAnimationFrame(tick);
  };
  const onMove = (move) => {
    pointerY = move.clientY;
    place();
    if (frame === null) frame = requestAnimationFrame(tick);
  };
  const onUp = () => {
    window.removeEventListener("pointermove", onMove);
    window.removeEventListener("pointerup", onUp);
    window.removeEventListener("pointercancel", onUp);
    if (frame !== null) cancelAnimationFrame(frame);
    card.classList.remove("dragging");
    state.order = [...list.children].map((c) => Number(c.dataset.index));
    state.selected = state.order.indexOf(Number(card.dataset.index));
    renderCards();
  };
  window.addEventListener("pointermove", onMove);
  window.addEventListener("pointerup", onUp);
  window.addEventListener("pointercancel", onUp);
}

// ------------------------------------------------------------------------------------------------
// Server round trips

function setStatus(message, kind = "", action = null) {
  // The task's status line, or the "all done" page's when that is what the labeler sees.
  const status = document.getElementById(state.item || !document.getElementById("task").hidden ? "status" : "done-status");
  status.replaceChildren(document.createTextNode(message));
  status.className = kind;
  if (action) {
    const button = el("button", { type: "button", class: "link", text: action.label });
    button.addEventListener("click", action.run);
    status.append(" ", button);
  }
}

function showError(e) {
  const reload = { label: "Reload the page", run: () => window.location.reload() };
  if (e.status === 401) setStatus(e.message, "error", { label: "Log in again", run: () => window.location.reload() });
  else if (e.status === 403 && /CSRF|security token/.test(e.message)) setStatus(e.message, "error", reload);
  else if (e.status === 409 && /reload/.test(e.message)) setStatus(e.message, "error", reload);
  else setStatus(e.message, "error");
}

function renderProgress(progress) {
  if (!progress) return;
  const seen = progress.done + progress.skipped;
  const total = seen + progress.remaining;
  document.getElementById("progress-fill").style.width = total ? `${(100 * seen) / total}%` : "0";
  document.getElementById("progress-text").textContent =
    `${progress.done} ${pairs() ? "judged" : "ranked"} · ${progress.skipped} skipped · ${progress.remaining} left · ${progress.items_complete}/${progress.items} items complete`;
}

async function refreshHistory() {
  const data = await api("GET", "/api/history");
  state.history = data.history;
  const list = document.getElementById("history");
  list.replaceChildren();
  for (const entry of data.history) {
    const button = el("button", { type: "button", class: "history-entry" + (state.item && state.editing && state.item.id === entry.item_id ? " current" : "") });
    const snippet = el("span", { class: "snippet" });
    setVisibleText(snippet, entry.prompt);
    button.append(el("span", { class: "badge " + entry.status, text: entry.status === "ranked" && pairs() ? "judged" : entry.status }), snippet);
    button.addEventListener("click", () => openEarlier(entry.item_id));
    list.append(el("li", {}, [button]));
  }
}

async function guarded(action) {
  if (state.busy) return;
  state.busy = true;
  try { await action(); } catch (e) { showError(e); } finally { state.busy = false; }
}

// The history list refreshes in the background: a keystroke right after an item appears must not
// find the page still busy.
function refreshHistoryLater() {
  refreshHistory().catch(showError);
}

async function loadNext() {
  state.editing = false;
  loadItem(await api("POST", "/api/next", {}));
  refreshHistoryLater();
}

async function openEarlier(itemId) {
  await guarded(async () => {
    state.editing = true;
    loadItem(await api("GET", `/api/item/${itemId}`));
    refreshHistoryLater();
  });
}

async function goBack() {
  try { await refreshHistory(); } catch (e) { showError(e); return; }  // the background refresh may not have landed yet
  const position = state.editing && state.item ? state.history.findIndex((h) => h.item_id === state.item.id) : -1;
  const previous = state.history[position + 1];
  if (!previous) { setStatus("No earlier judgment to go back to."); return; }
  await openEarlier(previous.item_id);
}

function judgmentBody() {
  const k = state.order.length;
  const scores = [], flags = [];
  for (let i = 0; i < k; i++) {
    scores.push(state.scores[i] ?? null);
    flags.push([...state.flagged[i]]);
  }
  return {
    item_id: state.item.id, revision: state.revision, ranking: groups(), scores, flags,
    rewrite: document.getElementById("rewrite").value || null,
  };
}

async function submit() {
  if (!state.item) return;
  if (pairs() && !state.choice) {
    setStatus("Pick the better response first: ← left, → right, or = about the same.", "error");
    return;
  }
  await guarded(async () => {
    await api("POST", "/api/judgment", judgmentBody());
    await loadNext();
    setStatus("Saved ✓", "ok");
  });
}

async function skip() {
  if (!state.item) return;
  await guarded(async () => {
    await api("POST", "/api/skip", { item_id: state.item.id, revision: state.revision });
    await loadNext();
    setStatus("Skipped", "ok");
  });
}

function onKey(event) {
  if (event.target.closest("input, textarea, summary") || event.ctrlKey || event.metaKey || event.altKey) {
    if (state.item && event.key === "Escape") escapeToCards();
    return;
  }
  if (!state.item) {  // the "all done" page: B still goes back to the last judgment
    if (event.key === "b") { event.preventDefault(); goBack(); }
    return;
  }
  const key = event.key;
  let handled = true;
  if (key === "Escape") escapeToCards();
  else if (pairs() && key === "ArrowLeft") choose("left");
  else if (pairs() && key === "ArrowRight") choose("right");
  else if (event.shiftKey && (key === "ArrowUp" || key === "K")) moveCard(state.selected, -1);
  else if (event.shiftKey && (key === "ArrowDown" || key === "J")) moveCard(state.selected, +1);
  else if (event.shiftKey && /^Digit[1-7]$/.test(event.code)) setScore(state.order[state.selected], Number(event.code.slice(5)));
  else if (key === "ArrowUp" || key === "k") selectCard(state.selected - 1);
  else if (key === "ArrowDown" || key === "j") selectCard(state.selected + 1);
  else if (!event.shiftKey && /^[1-9]$/.test(key)) selectCard(Number(key) - 1);
  else if (key === "=" || key === "t") toggleTie(state.selected);
  else if (key === "f") {
    const details = document.querySelectorAll("#cards .card")[state.selected].querySelector("details");
    details.open = !details.open;
    if (details.open) details.querySelector("input").focus();
  } else if (key === "Enter" && !event.target.closest("button")) submit();
  else if (key === "s") skip();
  else if (key === "b") goBack();
  else handled = false;
  if (handled) event.preventDefault();
}

function escapeToCards() {  // leave a flag list or the rewrite box, back to the cards
  document.querySelectorAll("#cards details[open]").forEach((details) => { details.open = false; });
  selectCard(state.selected);
}

async function setupLabeling() {
  let config;
  try { config = await api("GET", "/api/config"); } catch (e) { showError(e); return; }
  state.flags = config.flags;
  state.mode = config.mode;
  document.getElementById("submit").addEventListener("click", submit);
  document.getElementById("skip").addEventListener("click", skip);
  document.getElementById("back").addEventListener("click", goBack);
  document.getElementById("done-back").addEventListener("click", goBack);
  document.getElementById("resume").addEventListener("click", () => guarded(loadNext));
  document.querySelectorAll("#choice button[data-choice]").forEach((button) => button.addEventListener("click", () => choose(button.dataset.choice)));
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout", {}); } catch (e) { /* an ended session is logged out anyway */ }
    window.location.reload();
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", () => markLongCards());
  await guarded(loadNext);
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.loggedIn === "yes") setupLabeling(); else setupLogin();
});
