// LaTeX -> MathML for the chat page: the common subset (fractions, roots, scripts, Greek letters, operators, accents,
// \left..\right, \text, matrices and cases), built with createElementNS and textContent only. A command it does not
// know is shown as its own text, never dropped and never interpreted.

const NS = "http://www.w3.org/1998/Math/MathML";
const MAX_DEPTH = 40; // groups within groups; deeper input is shown as text

const IDENT = {
  alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ϵ", varepsilon: "ε", zeta: "ζ", eta: "η", theta: "θ",
  vartheta: "ϑ", iota: "ι", kappa: "κ", lambda: "λ", mu: "μ", nu: "ν", xi: "ξ", pi: "π", varpi: "ϖ", rho: "ρ",
  varrho: "ϱ", sigma: "σ", varsigma: "ς", tau: "τ", upsilon: "υ", phi: "ϕ", varphi: "φ", chi: "χ", psi: "ψ",
  omega: "ω", Gamma: "Γ", Delta: "Δ", Theta: "Θ", Lambda: "Λ", Xi: "Ξ", Pi: "Π", Sigma: "Σ", Upsilon: "Υ",
  Phi: "Φ", Psi: "Ψ", Omega: "Ω", hbar: "ℏ", ell: "ℓ", infty: "∞", partial: "∂", nabla: "∇", emptyset: "∅",
  varnothing: "∅", aleph: "ℵ", Re: "ℜ", Im: "ℑ", AA: "Å", imath: "ı", jmath: "ȷ",
};
const OPS = {
  times: "×", cdot: "⋅", div: "÷", pm: "±", mp: "∓", ast: "∗", star: "⋆", circ: "∘", bullet: "∙", leq: "≤",
  le: "≤", geq: "≥", ge: "≥", neq: "≠", ne: "≠", approx: "≈", equiv: "≡", sim: "∼", simeq: "≃", cong: "≅",
  propto: "∝", ll: "≪", gg: "≫", to: "→", rightarrow: "→", leftarrow: "←", gets: "←", Rightarrow: "⇒",
  Leftarrow: "⇐", leftrightarrow: "↔", Leftrightarrow: "⇔", longrightarrow: "⟶", longleftarrow: "⟵",
  Longrightarrow: "⟹", iff: "⟺", implies: "⟹", mapsto: "↦", rightleftharpoons: "⇌", leftrightarrows: "⇄",
  uparrow: "↑", downarrow: "↓", in: "∈", notin: "∉", ni: "∋", subset: "⊂", subseteq: "⊆", supset: "⊃",
  supseteq: "⊇", cup: "∪", cap: "∩", setminus: "∖", forall: "∀", exists: "∃", neg: "¬", lnot: "¬", land: "∧",
  wedge: "∧", lor: "∨", vee: "∨", oplus: "⊕", otimes: "⊗", cdots: "⋯", ldots: "…", dots: "…", vdots: "⋮",
  ddots: "⋱", perp: "⊥", parallel: "∥", angle: "∠", degree: "°", prime: "′", langle: "⟨", rangle: "⟩",
  lfloor: "⌊", rfloor: "⌋", lceil: "⌈", rceil: "⌉", mid: "∣", vert: "|", Vert: "‖", lvert: "|", rvert: "|",
  lVert: "‖", rVert: "‖", lbrace: "{", rbrace: "}", colon: ":", triangle: "△", square: "□", cdotp: "⋅",
};
const BIG = { sum: "∑", prod: "∏", coprod: "∐", int: "∫", iint: "∬", iiint: "∭", oint: "∮", bigcup: "⋃",
  bigcap: "⋂", bigoplus: "⨁", bigotimes: "⨂" };
const FUNCS = new Set(["sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh",
  "tanh", "coth", "log", "ln", "lg", "exp", "deg", "dim", "ker", "arg", "gcd", "hom", "Pr"]);
const LIMITS = new Set(["lim", "max", "min", "sup", "inf", "det", "limsup", "liminf", "argmax", "argmin"]);
const SPACES = { ",": "0.1667em", ":": "0.2222em", ">": "0.2222em", ";": "0.2778em", "!": "-0.1667em",
  " ": "0.25em", quad: "1em", qquad: "2em", enspace: "0.5em", thinspace: "0.1667em" };
const ACCENTS = { hat: "^", widehat: "^", bar: "¯", overline: "¯", vec: "→", dot: "˙", ddot: "¨", tilde: "~",
  widetilde: "~", check: "ˇ", breve: "˘", acute: "´", grave: "`", overrightarrow: "→", overleftarrow: "←" };
const FONTS = { mathbf: "bold", boldsymbol: "bold", bm: "bold", mathbb: "double-struck", mathrm: "normal",
  operatorname: "normal", mathit: "italic", mathcal: "normal", mathsf: "normal", mathtt: "normal", mathscr: "normal" };
const TEXTS = new Set(["text", "textrm", "textit", "textbf", "mbox", "mathrm_text", "textnormal", "texttt", "textsf"]);
const SIZERS = new Set(["big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr", "biggl", "biggr",
  "Biggl", "Biggr", "middle"]);
const NOOPS = new Set(["displaystyle", "textstyle", "scriptstyle", "limits", "nolimits", "hline", "nonumber",
  "notag", "left.", "label"]);
const ENV_FENCES = { matrix: ["", ""], pmatrix: ["(", ")"], bmatrix: ["[", "]"], Bmatrix: ["{", "}"],
  vmatrix: ["|", "|"], Vmatrix: ["‖", "‖"], cases: ["{", ""], smallmatrix: ["", ""], array: ["", ""],
  aligned: ["", ""], align: ["", ""], "align*": ["", ""], gathered: ["", ""], split: ["", ""],
  equation: ["", ""], "equation*": ["", ""], alignat: ["", ""] };
const DOUBLE_STRUCK = { C: "ℂ", H: "ℍ", N: "ℕ", P: "ℙ", Q: "ℚ", R: "ℝ", Z: "ℤ" };

function el(tag, children = [], attrs = {}) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}
const leaf = (tag, text, attrs) => { const n = el(tag, [], attrs); n.textContent = text; return n; };
const row = (nodes) => (nodes.length === 1 ? nodes[0] : el("mrow", nodes));

// Letters in the Unicode mathematical alphabets: MathML Core renders mathvariant="normal" only, so bold and
// double-struck are written as the characters themselves.
function styled(text, variant) {
  if (variant === "double-struck") {
    return [...text].map((c) => DOUBLE_STRUCK[c] || (/[A-Z]/.test(c) ? String.fromCodePoint(0x1d538 + c.charCodeAt(0) - 65) : c)).join("");
  }
  if (variant === "bold") {
    return [...text].map((c) => (/[A-Z]/.test(c) ? String.fromCodePoint(0x1d400 + c.charCodeAt(0) - 65)
      : /[a-z]/.test(c) ? String.fromCodePoint(0x1d41a + c.charCodeAt(0) - 97)
        : /[0-9]/.test(c) ? String.fromCodePoint(0x1d7ce + c.charCodeAt(0) - 48) : c)).join("");
  }
  return text;
}

class Parser {
  constructor(src, display) {
    this.s = src;
    this.i = 0;
    this.display = display;
    this.depth = 0;
  }

  space() { while (this.i < this.s.length && /\s/.test(this.s[this.i])) this.i++; }

  at(text) { return this.s.startsWith(text, this.i); }

  // a command's name at i (after the backslash): letters, or one other character
  commandAt(i) {
    const m = /^[A-Za-z]+\*?|^./s.exec(this.s.slice(i + 1, i + 40));
    return m ? m[0] : "";
  }

  atStop(stops) {
    if (this.i >= this.s.length) return true;
    const c = this.s[this.i];
    if (c === "}" && stops.brace) return true;
    if (c === "&" && stops.cell) return true;
    if (c === "\\") {
      const name = this.commandAt(this.i);
      if (name === "\\" && stops.cell) return true;
      if ((name === "right" && stops.right) || (name === "end" && stops.cell)) return true;
    }
    return false;
  }

  seq(stops = {}) {
    const out = [];
    for (;;) {
      this.space();
      if (this.atStop(stops)) return out;
      const atom = this.atom(stops);
      if (atom) out.push(this.scripts(atom));
    }
  }

  group() { // {...} or one token, as a node
    this.space();
    if (this.s[this.i] === "{") {
      this.i++;
      if (++this.depth > MAX_DEPTH) throw new Error("too deep");
      const inner = this.seq({ brace: true });
      this.depth--;
      if (this.s[this.i] === "}") this.i++;
      return el("mrow", inner);
    }
    if (this.i >= this.s.length) return el("mrow");
    return this.atom({}) || el("mrow");
  }

  rawGroup() { // {...} as its text, braces balanced
    this.space();
    if (this.s[this.i] !== "{") return this.i < this.s.length ? this.s[this.i++] : "";
    let depth = 0;
    const start = this.i + 1;
    for (; this.i < this.s.length; this.i++) {
      if (this.s[this.i] === "\\") { this.i++; continue; }
      if (this.s[this.i] === "{") depth++;
      else if (this.s[this.i] === "}" && --depth === 0) return this.s.slice(start, this.i++);
    }
    return this.s.slice(start);
  }

  scriptArg() { // x^2 3: a script is one character or one group
    this.space();
    const c = this.s[this.i];
    if (c === undefined) return el("mrow");
    if (c === "{" || c === "\\") return this.group();
    this.i++;
    if (/[0-9]/.test(c)) return leaf("mn", c);
    if (/\p{L}/u.test(c)) return leaf("mi", c);
    return leaf("mo", c === "-" ? "−" : c);
  }

  scripts(base) {
    let sub = null, sup = null;
    for (;;) {
      this.space();
      const c = this.s[this.i];
      if (c === "_" && !sub) { this.i++; sub = this.scriptArg(); }
      else if (c === "^" && !sup) { this.i++; sup = this.scriptArg(); }
      else if (c === "'") {
        let primes = "";
        while (this.s[this.i] === "'") { primes += "′"; this.i++; }
        sup = sup ? el("mrow", [leaf("mo", primes), sup]) : leaf("mo", primes);
      } else break;
    }
    if (!sub && !sup) return base;
    const limits = this.display && base.hasAttribute("data-limits"); // \sum, \lim: limits under and over
    if (sub && sup) return el(limits ? "munderover" : "msubsup", [base, sub, sup]);
    if (sub) return el(limits ? "munder" : "msub", [base, sub]);
    return el(limits ? "mover" : "msup", [base, sup]);
  }

  delimiter() {
    this.space();
    const c = this.s[this.i];
    if (c === undefined) return "";
    if (c === "\\") {
      const name = this.commandAt(this.i);
      this.i += 1 + name.length;
      return name === "{" ? "{" : name === "}" ? "}" : name === "|" ? "‖" : OPS[name] ?? "";
    }
    this.i++;
    return c === "." ? "" : c;
  }

  fenced(open, inner, close) {
    const parts = [];
    if (open) parts.push(leaf("mo", open, { fence: "true", stretchy: "true" }));
    parts.push(...inner);
    if (close) parts.push(leaf("mo", close, { fence: "true", stretchy: "true" }));
    return el("mrow", parts);
  }

  environment() {
    const name = this.rawGroup().trim();
    if (name === "array" || name === "alignat") this.rawGroup(); // the column spec: columns are not drawn
    const rows = [];
    let cells = [];
    for (;;) {
      cells.push(el("mtd", this.seq({ cell: true, brace: true })));
      if (this.s[this.i] === "&") { this.i++; continue; }
      if (this.at("\\\\")) { this.i += 2; rows.push(cells); cells = []; continue; }
      if (this.s[this.i] === "}") { this.i++; continue; } // a stray brace inside a cell
      if (this.at("\\end")) { this.i += 4; this.rawGroup(); }
      break;
    }
    if (cells.length > 1 || cells[0]?.childNodes.length) rows.push(cells);
    const attrs = {};
    if (name === "cases") attrs.columnalign = "left";
    if (name.startsWith("align") || name === "split") attrs.columnalign = "right left right left right left";
    const table = el("mtable", rows.map((r) => el("mtr", r)), attrs);
    const [open, close] = ENV_FENCES[name] ?? ["", ""];
    const out = open || close ? this.fenced(open, [table], close) : table;
    if (!(name in ENV_FENCES)) return el("mrow", [leaf("mtext", `\\begin{${name}}`, { class: "tex-unknown" }), out]);
    return out;
  }

  command(stops) {
    const name = this.commandAt(this.i);
    this.i += 1 + name.length;
    if (name in IDENT) return leaf("mi", IDENT[name]);
    if (name in OPS) return leaf("mo", OPS[name]);
    if (name in BIG) return leaf("mo", BIG[name], { largeop: "true", movablelimits: "true", "data-limits": "" });
    if (FUNCS.has(name)) return leaf("mi", name);
    if (LIMITS.has(name)) return leaf("mi", name, { "data-limits": "" });
    if (name in SPACES) return el("mspace", [], { width: SPACES[name] });
    if ("{}%$#&_|".includes(name) && name.length === 1) return leaf(name === "_" ? "mi" : "mo", name === "|" ? "‖" : name);
    if (name === "\\") return el("mspace", [], { linebreak: "newline" });
    if (NOOPS.has(name)) { if (name === "label") this.rawGroup(); return null; }
    if (name === "frac" || name === "dfrac" || name === "tfrac" || name === "cfrac") {
      return el("mfrac", [this.group(), this.group()]);
    }
    if (name === "binom" || name === "dbinom" || name === "tbinom") {
      return this.fenced("(", [el("mfrac", [this.group(), this.group()], { linethickness: "0" })], ")");
    }
    if (name === "sqrt") {
      this.space();
      if (this.s[this.i] === "[") {
        const end = this.s.indexOf("]", this.i);
        if (end > 0) {
          const index = new Parser(this.s.slice(this.i + 1, end), false);
          index.depth = this.depth + 1;
          this.i = end + 1;
          return el("mroot", [this.group(), row(index.seq())]);
        }
      }
      return el("msqrt", [this.group()]);
    }
    if (name in ACCENTS) return el("mover", [this.group(), leaf("mo", ACCENTS[name], { stretchy: "true" })], { accent: "true" });
    if (name === "underline") return el("munder", [this.group(), leaf("mo", "_", { stretchy: "true" })], { accentunder: "true" });
    if (name in FONTS) {
      const text = this.rawGroup();
      if (/^[A-Za-z0-9 ]*$/.test(text)) return leaf("mi", styled(text.replace(/ /g, ""), FONTS[name]), text.length === 1 && FONTS[name] === "normal" ? { mathvariant: "normal" } : {});
      const inner = new Parser(text, this.display);
      inner.depth = this.depth + 1;
      return row(inner.seq());
    }
    if (TEXTS.has(name)) return leaf("mtext", this.rawGroup());
    if (name === "left") {
      const open = this.delimiter();
      const inner = this.seq({ ...stops, right: true });
      if (this.at("\\right")) this.i += 6;
      return this.fenced(open, inner, this.delimiter());
    }
    if (name === "right") return null; // unmatched: its delimiter stays as an operator
    if (SIZERS.has(name)) { const d = this.delimiter(); return d ? leaf("mo", d, { stretchy: "false" }) : null; }
    if (name === "begin") {
      if (++this.depth > MAX_DEPTH) throw new Error("too deep");
      const env = this.environment();
      this.depth--;
      return env;
    }
    if (name === "not") { const next = this.atom(stops); return el("mrow", [next ?? el("mrow"), leaf("mo", "̸")]); }
    return leaf("mtext", `\\${name}`, { class: "tex-unknown" });
  }

  atom(stops) {
    const c = this.s[this.i];
    if (c === "\\") return this.command(stops);
    if (c === "{") return this.group();
    if (c === "^" || c === "_") return el("mrow"); // a script with nothing before it
    const number = /^[0-9]+(?:\.[0-9]+)?/.exec(this.s.slice(this.i, this.i + 64));
    if (number) { this.i += number[0].length; return leaf("mn", number[0]); }
    this.i += c.length;
    if (c === "}" || c === "&") return leaf("mo", c); // unmatched at this level
    if (c === "~") return el("mspace", [], { width: "0.25em" });
    if (/\p{L}/u.test(c)) return leaf("mi", c);
    if (c === "-") return leaf("mo", "−");
    if (c === "*") return leaf("mo", "∗");
    return leaf("mo", c);
  }
}

// The <math> element for one formula; on input it cannot read, the source as plain text instead.
export function texToMathML(src, display = false) {
  const math = el("math", [], display ? { display: "block" } : {});
  try {
    const parser = new Parser(src, display);
    const nodes = [];
    while (parser.i < parser.s.length) { // a stray closing brace or \end at the top: shown, and parsing goes on
      nodes.push(...parser.seq({}));
      if (parser.i < parser.s.length) nodes.push(leaf("mo", parser.s[parser.i++]));
    }
    const body = row(nodes.length ? nodes : [el("mrow")]);
    const semantics = el("semantics", [body.tagName === "mrow" ? body : el("mrow", [body])]);
    semantics.append(leaf("annotation", src, { encoding: "application/x-tex" }));
    math.append(semantics);
  } catch (error) {
    math.append(leaf("mtext", src));
  }
  return math;
}
