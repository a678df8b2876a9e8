// The chat page: conversations (store.js), streaming from /v1/chat/completions, attachments, the API key.
// Answers are drawn by render.js, which never parses model output as HTML.

import { Depictor, copyText, h, renderMarkdown } from "./render.js";
import * as store from "./store.js";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "interns1.apiKey";
const MAX_ATTACHMENT = 20 * 1024 * 1024; // bytes per file; the server's body limit is 50 MB by default

const page = {
  conversations: store.load(),
  current: null, // the conversation shown
  info: { model: "intern-s1", context_length: null },
  pending: [], // attachments for the next message
  running: null, // { controller, conversation, reply }
  key: localStorage.getItem(KEY_STORAGE) || "",
};

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

// --- the API, with the key asked once when a route answers 401 --------------------------------------------------
function askKey() {
  const dialog = $("key-dialog");
  return new Promise((resolve) => {
    const done = (value) => { dialog.close(); resolve(value); };
    $("key-ok").onclick = () => done($("key-input").value.trim());
    $("key-cancel").onclick = () => done("");
    $("key-input").onkeydown = (e) => { if (e.key === "Enter") done($("key-input").value.trim()); };
    dialog.oncancel = () => resolve("");
    $("key-input").value = "";
    dialog.showModal();
    $("key-input").focus();
  });
}

async function api(path, init = {}) {
  for (;;) {
    const headers = { ...(init.headers || {}) };
    if (page.key) headers.Authorization = `Bearer ${page.key}`;
    const response = await fetch(path, { ...init, headers });
    if (response.status !== 401) return response;
    const key = await askKey();
    if (!key) return response;
    page.key = key;
    localStorage.setItem(KEY_STORAGE, key);
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    return String(body?.error?.message ?? body?.error ?? response.statusText);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

const depictor = new Depictor((path) => api(path));
const views = new WeakMap(); // message -> its DOM parts, for redrawing while it streams

async function loadInfo() {
  const response = await api("/webui/info");
  if (!response.ok) { notice(await errorText(response)); return; }
  page.info = await response.json();
  $("model").textContent = page.info.model;
  $("context").textContent = `context ${page.info.context_length.toLocaleString("en")} tokens`;
  document.title = `${page.info.model} · Intern-S1 chat`;
}

// --- conversations ----------------------------------------------------------------------------------------------
function persist() {
  notice(store.save(page.conversations));
}

function select(conversation) {
  page.current = conversation;
  store.setCurrentId(conversation ? conversation.id : "");
  document.body.classList.remove("sidebar-open");
  drawList();
  drawMessages();
}

function newConversation() {
  const conversation = { id: store.newId(), title: "New chat", updated: Date.now(), messages: [] };
  page.conversations.unshift(conversation);
  return conversation;
}

function drawList() {
  const list = $("conversations");
  list.replaceChildren();
  const sorted = [...page.conversations].sort((a, b) => b.updated - a.updated);
  for (const c of sorted) {
    const title = h("button", { type: "button", class: "title", title: c.title, onclick: () => select(c) }, c.title);
    const rename = h("button", { type: "button", class: "small rename", title: "Rename", "aria-label": "Rename" }, "✎");
    const remove = h("button", { type: "button", class: "small delete", title: "Delete", "aria-label": "Delete" }, "✕");
    const item = h("li", { class: c === page.current ? "current" : "", "data-id": c.id }, title, rename, remove);
    rename.onclick = () => {
      const input = h("input", { type: "text", value: c.title, "aria-label": "New name" });
      const finish = (keep) => {
        if (keep && input.value.trim()) { c.title = input.value.trim().slice(0, 200); persist(); }
        drawList();
      };
      input.onkeydown = (e) => { if (e.key === "Enter") finish(true); if (e.key === "Escape") { e.stopPropagation(); finish(false); } };
      input.onblur = () => finish(true);
      item.replaceChildren(input);
      input.focus();
      input.select();
    };
    remove.onclick = () => {
      if (!confirm(`Delete "${c.title}"?`)) return;
      if (page.running?.conversation === c) page.running.controller.abort();
      page.conversations = page.conversations.filter((x) => x !== c);
      persist();
      select(page.current === c ? page.conversations[0] ?? null : page.current);
    };
    list.append(item);
  }
}

function exportAll() {
  const blob = new Blob([store.exportJSON(page.conversations)], { type: "application/json" });
  const a = h("a", { href: URL.createObjectURL(blob), download: `interns1-conversations-${new Date().toISOString().slice(0, 10)}.json` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

async function importFile(file) {
  try {
    page.conversations = store.importJSON(await file.text(), page.conversations);
    persist();
    select(page.conversations[0] ?? null);
  } catch (error) {
    notice(`Import failed: ${error.message}`);
  }
}

// --- drawing messages --------------------------------------------------------------------------------------------
function thumbs(attachments, removable) {
  if (!attachments.length) return null;
  return h("div", { class: "thumbs" }, ...attachments.map((a, i) => {
    const media = !a.url ? h("span", { class: "missing" }, `${a.name} (not saved)`)
      : a.kind === "video" ? h("video", { src: a.url, muted: "", preload: "metadata", title: a.name })
        : h("img", { src: a.url, alt: a.name, title: a.name });
    const remove = removable
      ? h("button", { type: "button", "aria-label": `Remove ${a.name}`, onclick: () => { page.pending.splice(i, 1); drawPending(); } }, "✕")
      : null;
    return h("div", { class: `thumb ${a.kind}` }, media, remove);
  }));
}

function statsText(s) {
  if (!s || s.completion_tokens == null) return ""; // null (stored) or not there yet (before the usage chunk)
  const parts = [`${s.completion_tokens} tokens`];
  if (s.seconds > 0 && s.completion_tokens > 1) parts.push(`${((s.completion_tokens - 1) / s.seconds).toFixed(1)} tok/s`);
  if (s.prompt_tokens != null) parts.push(`prompt ${s.prompt_tokens}${s.cached_tokens ? ` (${s.cached_tokens} cached)` : ""}`);
  if (s.first_token_s != null) parts.push(`first token ${s.first_token_s.toFixed(2)} s`);
  if (s.finish_reason === "length") parts.push("cut at the token limit");
  return parts.join(" · ");
}

// the parts of an assistant message that change while it streams
function fillReply(view, m) {
  const streaming = m.state === "streaming";
  if (m.reasoning) {
    if (!view.reasoning) {
      view.reasoning = h("details", { class: "reasoning" }, h("summary"), h("div", { class: "reasoning-body" }));
      view.node.insertBefore(view.reasoning, view.body);
    }
    view.reasoning.querySelector("summary").textContent = streaming && !m.content ? "Thinking…" : `Reasoning (${m.reasoning.split(/\s+/).filter(Boolean).length} words)`;
    view.reasoning.querySelector(".reasoning-body").textContent = m.reasoning;
  }
  view.body.replaceChildren(renderMarkdown(m.content, { depictor }));
  view.tools.replaceChildren(...m.toolCalls.map((c) => h("details", { class: "tool", open: "" },
    h("summary", {}, `Tool call: ${c.name}`), h("pre", {}, h("code", {}, prettyJSON(c.arguments))))));
  const status = m.error ? h("span", { class: "error" }, m.error)
    : m.state === "stopped" ? "Stopped. " : m.state === "interrupted" ? "Interrupted (the page was closed while it streamed). " : null;
  view.stats.replaceChildren(...[status, statsText(m.stats)].filter(Boolean));
}

function prettyJSON(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}

function messageView(conversation, m, index) {
  if (m.role === "user") {
    return h("div", { class: "message user" }, h("div", { class: "role" }, "You"), thumbs(m.attachments, false),
      h("div", { class: "body" }, m.content));
  }
  const view = { node: h("div", { class: "message assistant" }, h("div", { class: "role" }, page.info.model)) };
  view.body = h("div", { class: "body" });
  view.tools = h("div", { class: "tools" });
  view.stats = h("div", { class: "stats" });
  view.node.append(view.body, view.tools, view.stats);
  const last = index === conversation.messages.length - 1;
  if (last && m.state !== "streaming") {
    view.node.append(h("div", { class: "actions" },
      h("button", { type: "button", class: "regenerate", onclick: () => regenerate(conversation) }, "Regenerate"), " ",
      h("button", { type: "button", class: "copy-answer", onclick: (e) => copyText(m.content, e.target) }, "Copy")));
  }
  fillReply(view, m);
  views.set(m, view);
  return view.node;
}

function drawMessages() {
  const box = $("messages");
  box.replaceChildren();
  if (!page.current) return;
  page.current.messages.forEach((m, i) => box.append(messageView(page.current, m, i)));
  box.scrollTop = box.scrollHeight;
}

function drawPending() {
  $("attachments").replaceChildren(thumbs(page.pending, true) ?? "");
}

// --- sending and streaming ---------------------------------------------------------------------------------------
function toApi(messages) {
  return messages.filter((m) => m.role === "user" || m.content).map((m) => {
    if (m.role !== "user" || !m.attachments.some((a) => a.url)) return { role: m.role, content: m.content };
    const parts = m.attachments.filter((a) => a.url).map((a) => (a.kind === "video"
      ? { type: "video_url", video_url: { url: a.url } } : { type: "image_url", image_url: { url: a.url } }));
    return { role: "user", content: [...parts, { type: "text", text: m.content }] };
  });
}

// the server-sent events of a streaming response, as parsed JSON objects
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

let frame = 0;
function redraw(reply) {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    const view = views.get(reply);
    if (view?.node.isConnected) {
      const box = $("messages");
      const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
      fillReply(view, reply);
      if (atBottom) box.scrollTop = box.scrollHeight;
    }
  });
}

async function generate(conversation) {
  const thinking = $("thinking").checked;
  const reply = { role: "assistant", content: "", reasoning: "", thinking, attachments: [], toolCalls: [], stats: null, state: "streaming", error: "" };
  const history = toApi(conversation.messages);
  conversation.messages.push(reply);
  conversation.updated = Date.now();
  persist();
  drawList();
  drawMessages();
  const controller = new AbortController();
  page.running = { controller, conversation, reply };
  setRunning(true);
  const started = performance.now();
  let first = null, lastSave = started;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, signal: controller.signal,
      body: JSON.stringify({ model: page.info.model, messages: history, stream: true,
        stream_options: { include_usage: true }, enable_thinking: thinking }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const event of events(response.body)) {
      if (event.error) throw new Error(event.error.message ?? "the server ended the answer with an error");
      const choice = event.choices?.[0];
      const delta = choice?.delta ?? {};
      if (delta.reasoning_content || delta.content || delta.tool_calls) first ??= performance.now();
      if (delta.reasoning_content) reply.reasoning += delta.reasoning_content;
      if (delta.content) reply.content += delta.content;
      for (const call of delta.tool_calls ?? []) reply.toolCalls.push({ name: call.function?.name ?? "", arguments: call.function?.arguments ?? "" });
      if (choice?.finish_reason) reply.stats = { ...(reply.stats ?? {}), finish_reason: choice.finish_reason };
      if (event.usage) {
        const end = performance.now();
        reply.stats = { ...(reply.stats ?? {}), prompt_tokens: event.usage.prompt_tokens,
          completion_tokens: event.usage.completion_tokens,
          cached_tokens: event.usage.prompt_tokens_details?.cached_tokens ?? 0,
          seconds: first === null ? 0 : (end - first) / 1000, first_token_s: first === null ? null : (first - started) / 1000 };
      }
      if (performance.now() - lastSave > 1000) { persist(); lastSave = performance.now(); }
      redraw(reply);
    }
    reply.state = "done";
  } catch (error) {
    if (error.name === "AbortError") reply.state = "stopped";
    else { reply.state = "done"; reply.error = error.message; }
  } finally {
    page.running = null;
    setRunning(false);
    conversation.updated = Date.now();
    persist();
    if (page.current === conversation) drawMessages();
  }
}

function setRunning(running) {
  $("stop").hidden = !running;
  $("send").disabled = running;
}

function stop() {
  page.running?.controller.abort();
}

async function send() {
  const text = $("input").value;
  if (page.running || (!text.trim() && !page.pending.length)) return;
  const conversation = page.current ?? newConversation();
  if (!conversation.messages.length) conversation.title = (text.trim() || page.pending[0]?.name || "Attachment").slice(0, 60);
  conversation.messages.push({ role: "user", content: text, thinking: $("thinking").checked,
    attachments: page.pending, toolCalls: [], reasoning: "", stats: null, state: "done", error: "" });
  page.pending = [];
  $("input").value = "";
  drawPending();
  page.current = conversation;
  store.setCurrentId(conversation.id);
  await generate(conversation);
}

function regenerate(conversation) {
  if (page.running) return;
  if (conversation.messages.at(-1)?.role === "assistant") conversation.messages.pop();
  generate(conversation);
}

// --- attachments -------------------------------------------------------------------------------------------------
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function attach(files) {
  for (const file of files) {
    const kind = file.type.startsWith("video/") ? "video" : file.type.startsWith("image/") ? "image" : null;
    if (!kind) { notice(`${file.name}: only images and videos can be attached`); continue; }
    if (file.size > MAX_ATTACHMENT) { notice(`${file.name}: larger than ${MAX_ATTACHMENT >> 20} MB`); continue; }
    page.pending.push({ kind, name: file.name || kind, type: file.type, url: await readFile(file) });
  }
  drawPending();
}

// --- wiring --------------------------------------------------------------------------------------------------------
function wire() {
  $("send").onclick = send;
  $("stop").onclick = stop;
  $("new-chat").onclick = () => { if (!page.running) select(newConversation()); $("input").focus(); };
  $("menu").onclick = () => document.body.classList.toggle("sidebar-open");
  $("export").onclick = exportAll;
  $("import").onclick = () => $("import-file").click();
  $("import-file").onchange = (e) => { if (e.target.files[0]) importFile(e.target.files[0]); e.target.value = ""; };
  $("attach").onclick = () => $("file").click();
  $("file").onchange = (e) => { attach([...e.target.files]); e.target.value = ""; };
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("input").addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files ?? [])];
    if (files.length) { e.preventDefault(); attach(files); }
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && page.running) { e.preventDefault(); stop(); } });
  const composer = $("main");
  composer.addEventListener("dragover", (e) => { e.preventDefault(); $("composer").classList.add("dragging"); });
  composer.addEventListener("dragleave", () => $("composer").classList.remove("dragging"));
  composer.addEventListener("drop", (e) => {
    e.preventDefault();
    $("composer").classList.remove("dragging");
    attach([...(e.dataTransfer?.files ?? [])]);
  });
}

wire();
const saved = page.conversations.find((c) => c.id === store.currentId());
select(saved ?? null);
loadInfo();
$("input").focus();
