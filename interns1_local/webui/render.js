// The model's Markdown as DOM nodes. Every node is made with createElement and every piece of the model's text goes
// in through a Text node (append(string) / textContent), so no HTML in an answer is ever parsed: a <script> or an
// onerror= stays text. Links are http(s) only. LaTeX becomes MathML (math.js); <SMILES> spans, and code spans that
// the server's SMILES detector accepts, become structure images; <FASTA> spans become numbered sequence blocks.

import { texToMathML } from "./math.js";

const MAX_NESTING = 12; // quotes and lists within each other, emphasis within emphasis
const PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
const DOMAIN_TAGS = /^<(SMILES|SELFIES|IUPAC|FASTA)>/;
const RESIDUES_PER_LINE = 50;

// An element from literal attribute names (never from model output): "class", "on<event>" handlers, attributes;
// null and undefined children are left out.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// --- blocks ------------------------------------------------------------------------------------------------------
const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:\s+(.*)|$)/;
const TABLE_DELIMITER = /^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$/;

export function renderMarkdown(text, ctx = {}) {
  const fragment = document.createDocumentFragment();
  blocks(String(text).replace(/\r\n?/g, "\n").split("\n"), fragment, ctx, 0);
  return fragment;
}

function startsBlock(lines, i) {
  const line = lines[i];
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line)
    || isTable(lines, i);
}

function isTable(lines, i) {
  return lines[i].includes("|") && i + 1 < lines.length && lines[i + 1].includes("-")
    && TABLE_DELIMITER.test(lines[i + 1]) && (lines[i + 1].includes("|") || lines[i].trim().startsWith("|"));
}

function blocks(lines, parent, ctx, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) { i++; continue; }
    if ((m = FENCE.exec(line))) {
      const close = new RegExp(`^ {0,3}${m[1][0] === "`" ? "`" : "~"}{${m[1].length},}\\s*$`);
      let end = i + 1;
      while (end < lines.length && !close.test(lines[end])) end++;
      parent.append(codeBlock(lines.slice(i + 1, end).join("\n"), m[2], ctx)); // unclosed (still streaming): all
      i = end + 1;
    } else if ((m = HEADING.exec(line))) {
      const heading = h(`h${Math.min(6, m[1].length + 1)}`); // h1 is the page's; the answer's levels start at h2
      inline(m[2], heading, ctx, 0);
      parent.append(heading);
      i++;
    } else if (RULE.test(line)) {
      parent.append(h("hr"));
      i++;
    } else if (QUOTE.test(line) && depth < MAX_NESTING) {
      const inner = [];
      while (i < lines.length && lines[i].trim() && (QUOTE.test(lines[i]) || !startsBlock(lines, i))) {
        inner.push(lines[i].replace(QUOTE, ""));
        i++;
      }
      const quote = h("blockquote");
      blocks(inner, quote, ctx, depth + 1);
      parent.append(quote);
    } else if (isTable(lines, i)) {
      i = table(lines, i, parent, ctx);
    } else if (ITEM.test(line) && depth < MAX_NESTING) {
      i = list(lines, i, parent, ctx, depth);
    } else {
      const para = [line];
      i++;
      while (i < lines.length && lines[i].trim() && !startsBlock(lines, i)) para.push(lines[i++]);
      const p = h("p");
      inline(para.join("\n"), p, ctx, 0);
      parent.append(p);
    }
  }
}

function list(lines, i, parent, ctx, depth) {
  const first = ITEM.exec(lines[i]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const node = h(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) node.setAttribute("start", String(parseInt(first[2], 10)));
  let item = null, blank = false;
  const flush = () => {
    if (!item) return;
    const li = h("li");
    blocks(item, li, ctx, depth + 1);
    if (li.childNodes.length === 1 && li.firstChild.tagName === "P") li.replaceChildren(...li.firstChild.childNodes);
    node.append(li);
  };
  for (; i < lines.length; i++) {
    const line = lines[i];
    const m = ITEM.exec(line);
    if (m && m[1].length <= indent && /\d/.test(m[2]) === ordered) {
      flush();
      item = [m[3] ?? ""];
      blank = false;
      continue;
    }
    if (!line.trim()) { blank = true; item.push(""); continue; }
    const lineIndent = /^ */.exec(line)[0].length;
    if (lineIndent > indent) item.push(line.slice(Math.min(lineIndent, indent + 2 + (first[2].length - 1))));
    else if (!blank && !startsBlock(lines, i)) item.push(line.trim()); // a lazy continuation line
    else break;
    blank = false;
  }
  flush();
  parent.append(node);
  return i;
}

function cells(line) {
  let text = line.trim();
  if (text.startsWith("|")) text = text.slice(1);
  if (text.endsWith("|") && !text.endsWith("\\|")) text = text.slice(0, -1);
  return text.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function table(lines, i, parent, ctx) {
  const aligns = cells(lines[i + 1]).map((c) => (c.startsWith(":") && c.endsWith(":") ? "center"
    : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : ""));
  const cell = (tag, text, k) => {
    const node = h(tag, aligns[k] ? { class: `align-${aligns[k]}` } : {});
    inline(text, node, ctx, 0);
    return node;
  };
  const head = cells(lines[i]);
  const thead = h("thead", {}, h("tr", {}, ...head.map((c, k) => cell("th", c, k))));
  const tbody = h("tbody");
  for (i += 2; i < lines.length && lines[i].trim() && lines[i].includes("|"); i++) {
    const row = cells(lines[i]);
    tbody.append(h("tr", {}, ...head.map((_, k) => cell("td", row[k] ?? "", k))));
  }
  parent.append(h("div", { class: "table-wrap" }, h("table", {}, thead, tbody)));
  return i;
}

function codeBlock(code, lang, ctx) {
  if (/^(fasta|protein)$/i.test(lang)) {
    return protein(code.split("\n").filter((l) => !l.startsWith(">")).join("").replace(/\s+/g, ""));
  }
  const copy = h("button", { type: "button", class: "copy", title: "Copy the code" }, "Copy");
  const pre = h("pre", {}, h("code", lang ? { "data-lang": lang } : {}, code));
  copy.addEventListener("click", () => copyText(code, copy));
  return h("div", { class: "codeblock" }, h("div", { class: "codebar" }, h("span", {}, lang || "code"), copy), pre);
}

export function copyText(text, button) {
  const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1200); };
  if (navigator.clipboard) navigator.clipboard.writeText(text).then(done, () => { button.textContent = "Copy failed"; });
}

// --- domain spans --------------------------------------------------------------------------------------------------
function protein(sequence) {
  const block = h("span", { class: "protein", role: "figure", "aria-label": `protein sequence, ${sequence.length} residues` });
  for (let start = 0; start < sequence.length; start += RESIDUES_PER_LINE) {
    const line = sequence.slice(start, start + RESIDUES_PER_LINE).match(/.{1,10}/g).join(" ");
    block.append(h("span", { class: "protein-line" }, h("span", { class: "protein-pos" }, String(start + 1)), line));
  }
  return block;
}

function domainSpan(tag, text, ctx) {
  if (tag === "FASTA") return protein(text.replace(/\s+/g, ""));
  const code = h("code", { class: `domain ${tag.toLowerCase()}`, title: tag }, text);
  if (tag === "SMILES" && ctx.depictor) return ctx.depictor.node(text, false, code);
  return code;
}

function codeSpan(text, ctx) {
  const code = h("code", {}, text);
  if (ctx.depictor && text.length >= 10 && !/\s/.test(text)) return ctx.depictor.node(text, true, code);
  return code;
}

// --- inline --------------------------------------------------------------------------------------------------------
// where the inline $...$ that opens at i closes (pandoc's rule: no space inside either dollar, no digit after the
// closing one, so "$5 and $10" stays text), or -1
function closingDollar(s, i) {
  if (!s[i + 1] || /\s/.test(s[i + 1])) return -1;
  for (let j = i + 1; j < s.length; j++) {
    if (s[j] === "\\") { j++; continue; }
    if (s[j] === "\n" && s[j + 1] === "\n") return -1;
    if (s[j] === "$") return !/\s/.test(s[j - 1]) && !/[0-9]/.test(s[j + 1] ?? "") ? j : -1;
  }
  return -1;
}

function emphasisEnd(s, i, marker) {
  for (let j = s.indexOf(marker, i); j >= 0; j = s.indexOf(marker, j + 1)) {
    if (/\s/.test(s[j - 1])) continue;
    if (marker.length === 1 && (s[j + 1] === marker || s[j - 1] === marker)) continue;
    if (marker[0] === "_" && /[\p{L}\p{N}]/u.test(s[j + marker.length] ?? "")) continue; // snake_case, __init__
    return j;
  }
  return -1;
}

const EMPHASIS = [["**", "strong"], ["__", "strong"], ["~~", "del"], ["*", "em"], ["_", "em"]];

function link(label, url, ctx, depth) {
  let parsed = null;
  try { parsed = new URL(url); } catch { /* not absolute: shown as text */ }
  if (!parsed || !["http:", "https:"].includes(parsed.protocol)) return null;
  const a = h("a", { href: parsed.href, rel: "noopener noreferrer nofollow", target: "_blank" });
  inline(label, a, ctx, depth + 1);
  return a;
}

function inline(s, parent, ctx, depth) {
  let buf = "";
  let i = 0;
  const flush = () => { if (buf) parent.append(buf); buf = ""; };
  const put = (node, next) => { flush(); parent.append(node); i = next; };
  while (i < s.length) {
    const c = s[i];
    if (c === "\\") {
      const n = s[i + 1];
      const close = n === "(" ? "\\)" : n === "[" ? "\\]" : null;
      const end = close ? s.indexOf(close, i + 2) : -1;
      if (end > 0) { put(texToMathML(s.slice(i + 2, end).trim(), n === "["), end + 2); continue; }
      if (n === "\n") { put(h("br"), i + 2); continue; }
      if (n && PUNCT.includes(n)) { buf += n; i += 2; continue; }
      buf += c; i++; continue;
    }
    if (c === "`") {
      const run = /^`+/.exec(s.slice(i))[0];
      let end = s.indexOf(run, i + run.length);
      while (end >= 0 && s[end + run.length] === "`") end = s.indexOf(run, end + run.length + 1);
      if (end >= 0) {
        let code = s.slice(i + run.length, end).replace(/\n/g, " ");
        if (/^ .*[^ ].* $/.test(code)) code = code.slice(1, -1);
        put(codeSpan(code, ctx), end + run.length);
        continue;
      }
      buf += run; i += run.length; continue;
    }
    if (c === "$") {
      if (s[i + 1] === "$") {
        const end = s.indexOf("$$", i + 2);
        if (end > i + 2) { put(texToMathML(s.slice(i + 2, end).trim(), true), end + 2); continue; }
        buf += "$$"; i += 2; continue;
      }
      const end = closingDollar(s, i);
      if (end > 0) { put(texToMathML(s.slice(i + 1, end), false), end + 1); continue; }
      buf += c; i++; continue;
    }
    if (c === "<") {
      const tag = DOMAIN_TAGS.exec(s.slice(i, i + 9));
      const close = tag && `</${tag[1]}>`;
      const end = tag ? s.indexOf(close, i + tag[0].length) : -1;
      if (end >= 0) { put(domainSpan(tag[1], s.slice(i + tag[0].length, end).trim(), ctx), end + close.length); continue; }
      const auto = /^<(https?:\/\/[^\s<>]+)>/.exec(s.slice(i, i + 2100));
      const a = auto && link(auto[1], auto[1], ctx, depth);
      if (a) { put(a, i + auto[0].length); continue; }
      buf += c; i++; continue;
    }
    if (c === "[" && depth < MAX_NESTING) {
      const m = /^\[([^\]\n]*)\]\(\s*(\S+?)(?:\s+"[^"\n]*")?\s*\)/.exec(s.slice(i, i + 4000));
      const a = m && link(m[1], m[2], ctx, depth);
      if (a) { put(a, i + m[0].length); continue; }
    }
    if ("*_~".includes(c) && depth < MAX_NESTING) {
      const found = EMPHASIS.find(([marker]) => s.startsWith(marker, i));
      if (found && !(c === "_" && /[\p{L}\p{N}]/u.test(s[i - 1] ?? "")) && /\S/.test(s[i + found[0].length] ?? " ")) {
        const end = emphasisEnd(s, i + found[0].length + 1, found[0]);
        if (end > 0) {
          const node = h(found[1]);
          inline(s.slice(i + found[0].length, end), node, ctx, depth + 1);
          put(node, end + found[0].length);
          continue;
        }
      }
    }
    if (c === "\n" && buf.endsWith("  ")) { buf = buf.trimEnd(); put(h("br"), i + 1); continue; }
    buf += c;
    i++;
  }
  flush();
}

// --- molecules ------------------------------------------------------------------------------------------------------
// Structures drawn by the server (GET /api/depict, RDKit), fetched once per string and shown as <img> from a blob:
// URL; an <img> runs no script, whatever the SVG holds. Until a drawing arrives, and when there is none (not SMILES,
// RDKit not installed), the text stays.
export class Depictor {
  constructor(fetcher) {
    this.fetcher = fetcher; // (path) -> Promise<Response>, with the API key
    this.cache = new Map();
  }

  node(smiles, detect, text) {
    const key = `${detect ? "detect" : "tag"}:${smiles}`;
    let entry = this.cache.get(key);
    if (!entry) {
      entry = { state: "pending", waiting: [] };
      this.cache.set(key, entry);
      this.load(smiles, detect, key, entry);
    }
    if (entry.state === "ok") return this.figure(smiles, entry.url, text);
    if (entry.state === "pending") entry.waiting.push(text);
    else text.title = entry.reason;
    return text;
  }

  figure(smiles, url, caption) {
    const img = h("img", { src: url, alt: `structure of ${smiles}`, class: "structure", loading: "lazy" });
    return h("span", { class: "molecule" }, img, caption);
  }

  async load(smiles, detect, key, entry) {
    const query = `smiles=${encodeURIComponent(smiles)}${detect ? "&detect=true" : ""}`;
    try {
      const response = await this.fetcher(`/api/depict?${query}`).catch(async () => {
        await new Promise((done) => setTimeout(done, 500)); // a dropped connection: once more before giving up
        return this.fetcher(`/api/depict?${query}`);
      });
      if (response.ok && (response.headers.get("content-type") || "").startsWith("image/svg+xml")) {
        entry.url = URL.createObjectURL(await response.blob());
        entry.state = "ok";
      } else {
        entry.state = "failed";
        entry.reason = await response.json().then((b) => String(b.error ?? response.status), () => String(response.status));
        if (response.status === 401) this.cache.delete(key); // try again once a key is given
      }
    } catch (error) {
      entry.state = "failed";
      entry.reason = String(error);
      this.cache.delete(key);
    }
    for (const text of entry.waiting) {
      if (entry.state === "ok" && text.isConnected) {
        const [parent, next] = [text.parentNode, text.nextSibling];
        parent.insertBefore(this.figure(smiles, entry.url, text), next); // the figure takes the text as its caption
      }
      else if (entry.reason) text.title = entry.reason;
    }
    entry.waiting = [];
  }
}
