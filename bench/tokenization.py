"""Dynamic tokenizer benchmark (SPEC 5): ``DynamicTokenizer.encode`` against llama.cpp's plain BPE on one GGUF.

1. Throughput, MB/s of UTF-8 input, on a ~1 MB mixed corpus built deterministically here: English-like prose with
   ``<SMILES>``-tagged and bare (auto-detected) SMILES, ``<IUPAC>``-tagged names, bare protein sequences of 30-300
   residues, CJK sentences and code blocks. Tokenised paragraph by paragraph (1-4 KB, the size of a chat turn) and
   one-shot as one text. Plain = llama.cpp's ``tokenize(vocab, text, special=True)``; tiktoken-bpe-only = the BPE the
   dynamic tokenizer uses inside (``bytebpe.fast_bpe``) on the whole text, no spans and no added tokens: the floor
   under the dynamic tokenizer's time. They alternate in each repeat; the median and the best of ``--repeats`` are
   printed, and the dynamic run's time split by stage (split + span detection, domain spans, BPE). Goal: dynamic
   >= 10 MB/s; below it, cProfile's top functions are printed too.
2. Tokens used per corpus (each string tokenised on its own): 2000 SMILES tagged and bare, 500 proteins bare, 500
   IUPAC names tagged; dynamic vs plain, and % fewer tokens. Goal: >= 50% fewer on SMILES with the real models.

The strings come from ``interns1_local.synth.corpora``'s generators driven by ``random.Random("mixed-bench-1")`` and
``("tokens-bench-1")``, not by the seeds the synthetic SentencePiece models were trained on (``"SMILES-0"`` etc.).

    python bench/tokenization.py                    # synthetic Intern-S1-mini (tiny), converted to Q8_0
    python bench/tokenization.py --gguf PATH        # any converted GGUF carrying interns1.tokenizer.* keys

The synthetic checkpoint and its GGUF are cached under ~/.cache/interns1-local/bench-tokenize/.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import pstats
import random
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import llama_cpp

from interns1_local.converters.convert import ConvertOptions, convert
from interns1_local.gguf_header import read_header
from interns1_local.runtime.backend import quiet_logs, tokenize
from interns1_local.runtime.bytebpe import fast_bpe
from interns1_local.runtime.dyntok import DynamicTokenizer
from interns1_local.synth import write_checkpoint
from interns1_local.synth.corpora import iupac, protein, smiles

CACHE = Path.home() / ".cache" / "interns1-local" / "bench-tokenize"
SEED = "bench-1"  # not the training seed: the synthetic domain models saw domain_corpus(domain, seed=0)
GOAL_MBS = 10.0
PROSE = ("the molecule binds to a receptor with high affinity and we measured its solubility in water at room "
         "temperature before the second assay showed that this compound was stable for several weeks while "
         "another sample degraded quickly under light so our team repeated every experiment twice")
WORDS = tuple(PROSE.split())
CJK = ("该化合物在水中的溶解度很高。", "蛋白质序列决定了它的三维结构。", "実験は室温で二回繰り返された。")
CODE = ("```python\nfrom rdkit import Chem\nmol = Chem.MolFromSmiles(smiles)\nprint(mol.GetNumAtoms())\n```",
        "```js\nconst total = items.reduce((a, b) => a + b.weight, 0);\nconsole.log(`total: ${total}`);\n```")
Encode = Callable[[str], list[int]]


def synthetic_gguf() -> Path:
    """The cached synthetic Intern-S1-mini (tiny) language-model GGUF, built on first use."""
    ckpt = CACHE / "Intern-S1-mini-tiny"
    if not (ckpt / "model.safetensors.index.json").is_file():
        write_checkpoint(ckpt, model="mini", size="tiny")
    out = CACHE / "Intern-S1-mini-tiny-q8_0-f16"
    found = [p for p in sorted(out.glob("*.gguf")) if not p.name.startswith("mmproj-")]
    return found[0] if found else convert(ckpt, out, ConvertOptions("q8_0", "f16")).model.paths[0]


def protein_seq(rng: random.Random) -> str:
    """30-300 residues: the training generator's motif sequences, concatenated and cut."""
    n, seq = rng.randint(30, 300), ""
    while len(seq) < n:
        seq += protein(rng)
    return seq[:n]


def paragraph(rng: random.Random) -> str:
    """1-4 KB of prose with scientific spans and the odd CJK sentence or code block in between."""
    target, parts = rng.randint(1000, 4000), []
    while sum(len(p.encode()) + 1 for p in parts) < target:
        kind = rng.choices(("prose", "smiles", "bare", "iupac", "protein", "cjk", "code"),
                           (10, 2, 2, 1, 1, 1, 0.3))[0]
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20)))
        parts.append({"prose": f"{words.capitalize()}.", "smiles": f"Its SMILES is <SMILES>{smiles(rng)}</SMILES>.",
                      "bare": f"We used {smiles(rng)} as the solvent.", "iupac": f"Named <IUPAC>{iupac(rng)}</IUPAC>.",
                      "protein": f"The chain {protein_seq(rng)} folds.", "cjk": rng.choice(CJK),
                      "code": f"\n{rng.choice(CODE)}\n"}[kind])
    return " ".join(parts)


def mixed_corpus(megabytes: float) -> list[str]:
    rng, paras, size = random.Random(f"mixed-{SEED}"), list[str](), 0
    while size < megabytes * 1e6:
        paras.append(paragraph(rng))
        size += len(paras[-1].encode()) + 2  # joined by blank lines for the one-shot text
    return paras


def timed(encode: Encode, texts: list[str]) -> tuple[float, int]:
    t, n = time.perf_counter(), sum(len(encode(s)) for s in texts)
    return time.perf_counter() - t, n


def stage_shares(dyn: DynamicTokenizer, paras: list[str]) -> str:
    """Where one chunked dynamic run spends its time, each stage timed around its calls on this instance: splitting
    and span detection, domain spans (SentencePiece, with its rare BPE fallback), BPE of plain text."""
    stages = {"_split": "split+detect", "_domain_segment": "domain spans", "bpe": "BPE"}
    spent, originals = dict.fromkeys(stages, 0.0), {name: getattr(dyn, name) for name in stages}

    def timer(name: str, fn: Callable[..., object]) -> Callable[..., object]:
        def run(*args: object) -> object:
            t, out = time.perf_counter(), fn(*args)
            spent[name] += time.perf_counter() - t
            return out
        return run

    for name, fn in originals.items():
        setattr(dyn, name, timer(name, fn))
    total = timed(dyn.encode, paras)[0]
    for name, fn in originals.items():
        setattr(dyn, name, fn)  # the instance's own methods again (as bound methods)
    return ", ".join(f"{label} {100 * spent[n] / total:.1f}%" for n, label in stages.items()) + f" of {total:.3f} s"


def bench_throughput(encoders: dict[str, Encode], dyn: DynamicTokenizer, paras: list[str],
                     repeats: int) -> dict[str, str]:
    whole = "\n\n".join(paras)
    mb = {"chunked": sum(len(p.encode()) for p in paras) / 1e6, "one-shot": len(whole.encode()) / 1e6}
    inputs = {"chunked": paras, "one-shot": [whole]}
    rows = {"corpus": f"{mb['one-shot']:.3f} MB, {len(paras)} paragraphs of "
                      f"{min(len(p.encode()) for p in paras)}-{max(len(p.encode()) for p in paras)} bytes"}
    for mode, texts in inputs.items():
        seconds: dict[str, list[float]] = {name: [] for name in encoders}
        counts: dict[str, int] = {}
        for r in range(repeats + 1):  # round 0 is a warm-up
            for name in list(encoders)[r % 2:] + list(encoders)[:r % 2]:  # alternate which one goes first
                s, counts[name] = timed(encoders[name], texts)
                if r:
                    seconds[name].append(s)
        rate = {name: mb[mode] / median(v) for name, v in seconds.items()}
        for name, v in seconds.items():
            rows[f"{mode} {name} MB/s"] = f"{rate[name]:.2f} (best {mb[mode] / min(v):.2f}), {counts[name]} tokens"
        rows[f"{mode} dynamic/plain"] = f"{rate['dynamic'] / rate['plain']:.3f}"
        rows[f"{mode} goal >= {GOAL_MBS:g} MB/s"] = "met" if rate["dynamic"] >= GOAL_MBS else "NOT met"
    rows["chunked dynamic stages"] = stage_shares(dyn, paras)
    return rows


def profile(encode: Encode, paras: list[str], top: int) -> None:
    """cProfile of the chunked dynamic run: the functions with the most own time, as % of the whole run."""
    prof = cProfile.Profile()
    prof.runcall(lambda: [encode(p) for p in paras])
    stats = pstats.Stats(prof)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"\nprofile of chunked dynamic encode ({total:.2f} s under cProfile), top {top} by own time:")
    print("  (C work - llama_tokenize via ctypes, iterating a regex's finditer - counts as the caller's own time)")
    print(f"  {'own %':>6} {'cum %':>6} {'calls':>9}  function")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
    for (file, line, func), (_, calls, own, cum, _) in rows[:top]:
        where = f"{Path(file).name}:{line}" if line else file
        print(f"  {100 * own / total:6.1f} {100 * cum / total:6.1f} {calls:9d}  {func} ({where})")


def bench_tokens(encoders: dict[str, Encode], dyn: DynamicTokenizer) -> dict[str, str]:
    rng = random.Random(f"tokens-{SEED}")
    mols = [smiles(rng) for _ in range(2000)]
    corpora = {"SMILES tagged (2000)": [f"<SMILES>{s}</SMILES>" for s in mols], "SMILES bare (2000)": mols,
               "protein bare (500)": [protein_seq(rng) for _ in range(500)],
               "IUPAC tagged (500)": [f"<IUPAC>{iupac(rng)}</IUPAC>" for _ in range(500)]}
    rows: dict[str, str] = {}
    for name, texts in corpora.items():
        n = {k: sum(len(enc(t)) for t in texts) for k, enc in encoders.items()}
        spans = sum(any(seg.domain not in (None, "special") for seg in dyn.segments(t)) for t in texts)
        rows[name] = (f"dynamic {n['dynamic']} / plain {n['plain']} tokens = {n['dynamic'] / n['plain']:.3f}, "
                      f"{100 * (1 - n['dynamic'] / n['plain']):.1f}% fewer; {spans} strings with a domain span")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help="a converted GGUF (default: the cached synthetic one)")
    parser.add_argument("--mb", type=float, default=1.0, help="size of the mixed corpus in MB (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=15, help="profile rows printed when the goal is not met")
    args = parser.parse_args()
    path = args.gguf or synthetic_gguf()
    quiet_logs()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        sys.exit(f"llama.cpp could not load the vocabulary of {path}")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        meta = read_header(path, max_array=None).metadata
        llama_bpe: Encode = lambda t: tokenize(vocab, t, special=False)  # noqa: E731
        dyn = DynamicTokenizer.from_metadata(meta, llama_bpe)
        if dyn is None:
            sys.exit(f"{path} carries no interns1.tokenizer.* keys: nothing to compare")
        encoders: dict[str, Encode] = {"dynamic": dyn.encode, "plain": lambda t: tokenize(vocab, t, special=True)}
        check = "RDKit" if importlib.util.find_spec("rdkit") else "hand rules (RDKit not installed)"
        bpe = "llama.cpp" if dyn.bpe is llama_bpe else "tiktoken over the GGUF's vocabulary (runtime/bytebpe.py)"
        print(f"model {path} ({', '.join(f'{d.name} {d.size}' for d in dyn.domains)} pieces), SMILES check: "
              f"{check}, BPE inside the dynamic tokenizer: {bpe}, median of {args.repeats}", flush=True)
        paras = mixed_corpus(args.mb)
        fast = fast_bpe(meta)  # the BPE alone, text only: what the dynamic tokenizer adds is the rest
        extra = {"tiktoken-bpe-only": fast} if fast else {}
        report = {"1. throughput": bench_throughput({**encoders, **extra}, dyn, paras, args.repeats),
                  "2. tokens used": bench_tokens(encoders, dyn)}
        print()
        for section, rows in report.items():
            print(section)
            for key, value in rows.items():
                print(f"  {key:28} {value}")
        if args.gguf is None:
            print("\nCaveat: synthetic domain models (small SentencePiece models trained on generated strings). "
                  "The token savings\nonly show the mechanism; the goal (>= 50% fewer on SMILES) is about the real "
                  "Intern-S1 models (use --gguf).")
        if "NOT" in report["1. throughput"][f"chunked goal >= {GOAL_MBS:g} MB/s"]:
            profile(dyn.encode, paras, args.top)
    finally:
        llama_cpp.llama_model_free(model)
    print(f"\ncommand: python bench/tokenization.py {shlex.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
