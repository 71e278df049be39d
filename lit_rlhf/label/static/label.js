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
  const response = await fetch(path, options);
  let data = {};
  try { data = await response.json(); } catch (e) { /* an empty or non-JSON error body */ }
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
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
// Labeling page state: the item, the card order (response indices, best first), ties, scores, flags

const state = {
  flags: {}, item: null, revision: 0, order: [], tied: new Set(), scores: {}, flagged: {},
  selected: 0, history: [], editing: false, busy: false,
};

function loadItem(payload) {
  const task = document.getElementById("task");
  const done = document.getElementById("done");
  renderProgress(payload.progress);
  state.item = payload.item;
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
  state.selected = 0;
  if (judgment && judgment.ranking) {
    state.order = judgment.ranking.flat();
    for (const group of judgment.ranking) group.slice(1).forEach((i) => state.tied.add(i));
    for (let i = 0; i < k; i++) {
      if (judgment.scores[i] !== null) state.scores[i] = judgment.scores[i];
      state.flagged[i] = new Set(judgment.flags[i]);
    }
  } else {
    state.order = payload.item.responses.map((r) => r.index);
  }
  for (let i = 0; i < k; i++) if (!state.flagged[i]) state.flagged[i] = new Set();
  document.getElementById("rewrite").value = (judgment && judgment.rewrite) || "";
  document.getElementById("prompt").textContent = payload.item.prompt;
  document.getElementById("item-meta").textContent = `· item ${payload.item.id} · ${k} responses`;
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

function groups() {
  const result = [];
  state.order.forEach((index, position) => {
    if (position > 0 && state.tied.has(index)) result[result.length - 1].push(index);
    else result.push([index]);
  });
  return result;
}

function renderCards() {
  const list = document.getElementById("cards");
  list.replaceChildren();
  let rank = 0;
  state.order.forEach((index, position) => {
    const tied = position > 0 && state.tied.has(index);
    if (!tied) rank += 1;
    list.append(buildCard(index, position, rank, tied));
  });
  selectCard(Math.min(state.selected, state.order.length - 1), false);
}

function buildCard(index, position, rank, tied) {
  const card = el("li", { class: "card" + (tied ? " tied" : ""), tabindex: "-1", "data-index": String(index), "data-position": String(position) });
  card.setAttribute("aria-label", `Rank ${rank}${tied ? " (tied)" : ""}: response ${letterOf(index)}`);
  const tieButton = el("button", { type: "button", class: "tie" + (tied ? " on" : ""), text: tied ? "= tied" : "= tie", title: "Tie with the card above (=)", "aria-pressed": String(tied) });
  tieButton.disabled = position === 0;
  tieButton.addEventListener("click", () => { toggleTie(position); });
  const up = el("button", { type: "button", class: "move", text: "▲", title: "Move up (Shift+↑)", "aria-label": "Move up" });
  up.disabled = position === 0;
  up.addEventListener("click", () => moveCard(position, -1));
  const down = el("button", { type: "button", class: "move", text: "▼", title: "Move down (Shift+↓)", "aria-label": "Move down" });
  down.disabled = position === state.order.length - 1;
  down.addEventListener("click", () => moveCard(position, +1));
  const head = el("div", { class: "card-head" }, [
    el("span", { class: "grip", text: "⠿", "aria-hidden": "true", title: "Drag to reorder" }),
    el("span", { class: "rank", text: tied ? `=${rank}` : String(rank) }),
    el("span", { class: "letter", text: `Response ${letterOf(index)}` }),
    el("span", { class: "spacer" }),
    tieButton, up, down,
  ]);
  head.addEventListener("pointerdown", (event) => startDrag(event, card));
  const text = el("div", { class: "text" });
  text.textContent = textOf(index);  // literal text: never parsed as HTML
  card.append(head, text, buildScore(index), buildFlags(index));
  card.addEventListener("click", () => selectCard(Number(card.dataset.position), false));
  return card;
}

function buildScore(index) {
  const group = el("div", { class: "score", role: "radiogroup", "aria-label": "Overall score, 1 (bad) to 7 (great)" });
  group.append(el("span", { class: "caption", text: "Score" }));
  for (let value = 1; value <= 7; value++) {
    const on = state.scores[index] === value;
    const button = el("button", { type: "button", class: on ? "on" : "", text: String(value), role: "radio", "aria-checked": String(on), title: `Score ${value} (Shift+${value})` });
    button.addEventListener("click", (event) => { event.stopPropagation(); setScore(index, value); });
    group.append(button);
  }
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

function moveCard(position, delta) {
  const target = position + delta;
  if (target < 0 || target >= state.order.length) return;
  const [index] = state.order.splice(position, 1);
  state.order.splice(target, 0, index);
  state.selected = target;
  renderCards();
  selectCard(target);
}

function toggleTie(position) {
  if (position === 0) return;
  const index = state.order[position];
  if (state.tied.has(index)) state.tied.delete(index); else state.tied.add(index);
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
// card: moving a node in the DOM drops its pointer capture. Near the window's edge the page scrolls.
function startDrag(event, card) {
  if (event.button !== 0 || event.target.closest("button")) return;
  event.preventDefault();
  const list = document.getElementById("cards");
  card.classList.add("dragging");
  const onMove = (move) => {
    const others = [...list.children].filter((c) => c !== card);
    const before = others.find((c) => { const box = c.getBoundingClientRect(); return move.clientY < box.top + box.height / 2; });
    if (before) { if (card.nextElementSibling !== before) list.insertBefore(card, before); }
    else if (list.lastElementChild !== card) list.append(card);
    const edge = 40;
    if (move.clientY < edge) window.scrollBy(0, -20);
    else if (move.clientY > window.innerHeight - edge) window.scrollBy(0, 20);
  };
  const onUp = () => {
    window.removeEventListener("pointermove", onMove);
    window.removeEventListener("pointerup", onUp);
    window.removeEventListener("pointercancel", onUp);
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

function setStatus(message, kind = "") {
  const status = document.getElementById("status");
  status.textContent = message;
  status.className = kind;
}

function renderProgress(progress) {
  if (!progress) return;
  const seen = progress.done + progress.skipped;
  const total = seen + progress.remaining;
  document.getElementById("progress-fill").style.width = total ? `${(100 * seen) / total}%` : "0";
  document.getElementById("progress-text").textContent =
    `${progress.done} ranked · ${progress.skipped} skipped · ${progress.remaining} left · ${progress.items_complete}/${progress.items} items complete`;
}

async function refreshHistory() {
  const data = await api("GET", "/api/history");
  state.history = data.history;
  const list = document.getElementById("history");
  list.replaceChildren();
  for (const entry of data.history) {
    const button = el("button", { type: "button", class: "history-entry" + (state.item && state.editing && state.item.id === entry.item_id ? " current" : "") });
    button.append(el("span", { class: "badge " + entry.status, text: entry.status }), el("span", { class: "snippet", text: entry.prompt }));
    button.addEventListener("click", () => openEarlier(entry.item_id));
    list.append(el("li", {}, [button]));
  }
}

async function guarded(action) {
  if (state.busy) return;
  state.busy = true;
  try { await action(); } catch (e) { setStatus(e.message, "error"); } finally { state.busy = false; }
}

// The history list refreshes in the background: a keystroke right after an item appears must not
// find the page still busy.
function refreshHistoryLater() {
  refreshHistory().catch((e) => setStatus(e.message, "error"));
}

async function loadNext() {
  state.editing = false;
  loadItem(await api("GET", "/api/next"));
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
  await refreshHistory();  // the background refresh may not have landed yet
  const position = state.editing ? state.history.findIndex((h) => h.item_id === state.item.id) : -1;
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
  if (state.item && event.key === "Escape") {  // leave a flag list or the rewrite box, back to the cards
    document.querySelectorAll("#cards details[open]").forEach((details) => { details.open = false; });
    selectCard(state.selected);
    return;
  }
  if (!state.item || event.target.closest("input, textarea, summary") || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  let handled = true;
  if (event.shiftKey && (key === "ArrowUp" || key === "K")) moveCard(state.selected, -1);
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

async function setupLabeling() {
  const config = await api("GET", "/api/config");
  state.flags = config.flags;
  document.getElementById("submit").addEventListener("click", submit);
  document.getElementById("skip").addEventListener("click", skip);
  document.getElementById("back").addEventListener("click", goBack);
  document.getElementById("resume").addEventListener("click", () => guarded(loadNext));
  document.getElementById("logout").addEventListener("click", async () => {
    await api("POST", "/api/logout", {});
    window.location.reload();
  });
  document.addEventListener("keydown", onKey);
  await guarded(loadNext);
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.loggedIn === "yes") setupLabeling(); else setupLogin();
});
