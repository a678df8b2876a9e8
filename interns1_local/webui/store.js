// Conversations kept in the browser's localStorage, and their export and import as JSON. What is read back (from
// storage or from an imported file) is checked field by field: only the expected fields, of the expected types.

const KEY = "interns1.conversations";
const CURRENT = "interns1.current";
export const FORMAT = "interns1-local.conversations.v1";

const str = (v, fallback = "") => (typeof v === "string" ? v : fallback);
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

function cleanAttachment(a) {
  if (!a || typeof a !== "object") return null;
  const kind = a.kind === "video" ? "video" : "image";
  const url = str(a.url);
  return { kind, name: str(a.name, kind), url: url.startsWith("data:") ? url : "", type: str(a.type) };
}

function cleanStats(s) {
  if (!s || typeof s !== "object") return null;
  const out = {};
  for (const k of ["prompt_tokens", "completion_tokens", "cached_tokens", "seconds", "first_token_s"]) out[k] = num(s[k]);
  out.finish_reason = str(s.finish_reason);
  return out;
}

function cleanMessage(m) {
  if (!m || typeof m !== "object" || !["user", "assistant"].includes(m.role)) return null;
  return {
    role: m.role,
    content: str(m.content),
    reasoning: str(m.reasoning),
    thinking: Boolean(m.thinking),
    attachments: Array.isArray(m.attachments) ? m.attachments.map(cleanAttachment).filter(Boolean) : [],
    toolCalls: Array.isArray(m.toolCalls)
      ? m.toolCalls.filter((c) => c && typeof c === "object").map((c) => ({ name: str(c.name), arguments: str(c.arguments) }))
      : [],
    stats: cleanStats(m.stats),
    state: str(m.state, "done") === "streaming" ? "interrupted" : str(m.state, "done"),
    error: str(m.error),
  };
}

export function cleanConversation(c) {
  if (!c || typeof c !== "object" || !Array.isArray(c.messages)) return null;
  return {
    id: str(c.id) || newId(),
    title: str(c.title, "Conversation").slice(0, 200),
    updated: num(c.updated) ?? Date.now(),
    messages: c.messages.map(cleanMessage).filter(Boolean),
  };
}

export function newId() {
  return `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

export function load() {
  try {
    const list = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(list) ? list.map(cleanConversation).filter(Boolean) : [];
  } catch {
    return [];
  }
}

// Saves everything; when the browser's quota is exceeded (attachments are data URLs, and the quota is a few MB),
// saves the text with the attachments left out and says so.
export function save(conversations) {
  try {
    localStorage.setItem(KEY, JSON.stringify(conversations));
    return "";
  } catch {
    const light = conversations.map((c) => ({
      ...c, messages: c.messages.map((m) => ({ ...m, attachments: m.attachments.map((a) => ({ ...a, url: "" })) })),
    }));
    try {
      localStorage.setItem(KEY, JSON.stringify(light));
      return "The browser's storage is full: attachments were not saved (the text was).";
    } catch {
      return "The browser's storage is full: this conversation was not saved.";
    }
  }
}

export const currentId = () => localStorage.getItem(CURRENT) || "";
export const setCurrentId = (id) => localStorage.setItem(CURRENT, id);

export function exportJSON(conversations) {
  return JSON.stringify({ format: FORMAT, exported: new Date().toISOString(), conversations }, null, 1);
}

// The conversations in an exported file, added to the ones here (an id already here gets a new one).
export function importJSON(text, existing) {
  const data = JSON.parse(text);
  const list = Array.isArray(data) ? data : data?.conversations;
  if (!Array.isArray(list)) throw new Error("not an export of this page (no conversations list)");
  const ids = new Set(existing.map((c) => c.id));
  const added = list.map(cleanConversation).filter(Boolean).map((c) => (ids.has(c.id) ? { ...c, id: newId() } : c));
  return [...added, ...existing];
}
