"""Intern-S1's dynamic tokenizer: written into the GGUF at conversion, reproduced at run time.

Expected segmentations come from the rules in SPEC 5 (worked out by hand per case); expected ids come from independent
tools on the checkpoint's own files: sentencepiece on ``tokenizer_*.model`` (+ the SPEC's offsets) for domain spans,
transformers' Qwen2 tokenizer for BPE text, ``tokenizer_config.json`` for added tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import unicodedata
from pathlib import Path

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen2Tokenizer

from interns1_local.runtime.backend import LoadOptions
from interns1_local.runtime.engine import Engine, Sampling
from interns1_local.runtime.tokenize import tokenize_text

OFFSETS = {"SMILES": 151669, "IUPAC": 151929, "FASTA": 152443}  # SPEC 5
PROTEIN = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 residues


@pytest.fixture(scope="module")
def files(converted):
    return converted("f16", "f16")


@pytest.fixture(scope="module")
def engine(files):
    eng = Engine(files.model.path, LoadOptions(n_ctx=2048, type_k="f32", type_v="f32", n_seq_max=2))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def reference(mini_ckpt: Path):
    """Independent pieces: plain BPE (no added tokens), the domain models, the added-token ids."""
    vocab = json.loads((mini_ckpt / "vocab.json").read_text())
    merges = [tuple(line.split(" ")) for line in (mini_ckpt / "merges.txt").read_text().splitlines()
              if line and not line.startswith("#version")]
    bpe = Qwen2Tokenizer(vocab=vocab, merges=merges)
    models = {d: spm.SentencePieceProcessor(model_file=str(mini_ckpt / f"tokenizer_{d}.model")) for d in OFFSETS}
    added = {v["content"]: int(k) for k, v in
             json.loads((mini_ckpt / "tokenizer_config.json").read_text())["added_tokens_decoder"].items()}
    return bpe, models, added


def _expected_ids(reference, text: str, domain: str | None) -> list[int]:
    bpe, models, added = reference
    if domain == "special":
        return [added[text]]
    if domain is None:
        return bpe.encode(text, add_special_tokens=False)
    sp = models[domain]
    return [i for piece, pid in zip(sp.encode(text, out_type=str), sp.encode(text, out_type=int))
            for i in (bpe.encode(piece.replace("▁", " "), add_special_tokens=False) if pid == 0
                      else [pid + OFFSETS[domain]])]


S = "special"
CASES = {
    "tagged and auto-detected (SPEC 5's example)": (
        "Describe <SMILES>C1=CC=C(C=C1)C=O</SMILES> and CC1=CC=CC=C1C=O",
        [("Describe ", None), ("<SMILES>", S), ("C1=CC=C(C=C1)C=O", "SMILES"), ("</SMILES>", S), (" and ", None),
         ("CC1=CC=CC=C1C=O", "SMILES")]),
    "SELFIES routes to the SMILES model": (
        "<SELFIES>[C][C][O]</SELFIES>", [("<SELFIES>", S), ("[C][C][O]", "SMILES"), ("</SELFIES>", S)]),
    "IUPAC": ("<IUPAC>2-methylpropan-1-ol</IUPAC>", [("<IUPAC>", S), ("2-methylpropan-1-ol", "IUPAC"),
                                                    ("</IUPAC>", S)]),
    "protein auto-detected": (f"Sequence {PROTEIN}.", [("Sequence ", None), (PROTEIN, "FASTA"), (".", None)]),
    "FASTA tagged: cut by the FASTA model, however short": (
        f"Seq <FASTA>{PROTEIN[:12]}</FASTA>.",
        [("Seq ", None), ("<FASTA>", S), (PROTEIN[:12], "FASTA"), ("</FASTA>", S), (".", None)]),
    "no SMILES detection inside FASTA tags": (
        "<FASTA>CC1=CC=CC=C1C=O</FASTA>", [("<FASTA>", S), ("CC1=CC=CC=C1C=O", "FASTA"), ("</FASTA>", S)]),
    "26 residues are too few": ("Seq " + PROTEIN[:26], [("Seq " + PROTEIN[:26], None)]),
    "SMILES shorter than 10": ("CCO is ethanol", [("CCO is ethanol", None)]),
    "SMILES glued to letters is a word": ("xCC1=CC=CC=C1C=O", [("xCC1=CC=CC=C1C=O", None)]),
    "a digit before joins the run, ring 7 never closes": ("7CC1=CC=CC=C1C=O", [("7CC1=CC=CC=C1C=O", None)]),
    "a comma ends the run": ("x, CC1=CC=CC=C1C=O, y", [("x, ", None), ("CC1=CC=CC=C1C=O", "SMILES"), (", y", None)]),
    "unbalanced ring closure is not SMILES": ("CC1=CC=CC=CC=O and", [("CC1=CC=CC=CC=O and", None)]),
    "MOLFORMULA protects, its tags are text": (
        "<MOLFORMULA>CC1=CC=CC=C1C=O</MOLFORMULA>",
        [("<MOLFORMULA>", None), ("CC1=CC=CC=C1C=O", None), ("</MOLFORMULA>", None)]),
    "no detection inside an explicit tag": (
        f"<IUPAC>{PROTEIN}</IUPAC>", [("<IUPAC>", S), (PROTEIN, "IUPAC"), ("</IUPAC>", S)]),
    "nested tags: the innermost model": (
        "<SMILES>CCO<IUPAC>ethanol</IUPAC>CC</SMILES>",
        [("<SMILES>", S), ("CCO", "SMILES"), ("<IUPAC>", S), ("ethanol", "IUPAC"), ("</IUPAC>", S),
         ("CC", "SMILES"), ("</SMILES>", S)]),
    "empty span": ("<SMILES></SMILES>", [("<SMILES>", S), ("</SMILES>", S)]),
    "special token inside a span": (
        "<SMILES>CC<|im_end|>O</SMILES>",
        [("<SMILES>", S), ("CC", "SMILES"), ("<|im_end|>", S), ("O", "SMILES"), ("</SMILES>", S)]),
    "unknown pieces fall back to BPE": ("<SMILES>C☃C</SMILES>", [("<SMILES>", S), ("C☃C", "SMILES"), ("</SMILES>", S)]),
    "NFC first": ("Cafe\u0301 <IUPAC>e\u0301thanol</IUPAC>",
                  [("Café ", None), ("<IUPAC>", S), ("éthanol", "IUPAC"), ("</IUPAC>", S)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_segmentation_table(engine, reference, name) -> None:
    text, expected = CASES[name]
    segments = engine.dyntok.segments(text)
    assert [(s.text, s.domain) for s in segments] == expected
    for s in segments:
        assert list(s.ids) == _expected_ids(reference, s.text, s.domain), s
    if name == "unknown pieces fall back to BPE":  # the snowman is no SMILES piece: plain BPE ids in the span
        assert any(i < 151643 for i in segments[1].ids)


def test_the_converter_writes_the_keys(files, mini_ckpt) -> None:
    from interns1_local.gguf_header import read_header

    meta = read_header(files.model.path, max_array=None).metadata
    assert meta["interns1.tokenizer.domains"] == ["SMILES", "IUPAC", "FASTA"]
    for d, offset in OFFSETS.items():
        assert meta[f"interns1.tokenizer.{d}.offset"] == offset
        assert bytes(meta[f"interns1.tokenizer.{d}.model"]) == (mini_ckpt / f"tokenizer_{d}.model").read_bytes()
    assert meta["interns1.tokenizer.SMILES.begin_tags"] == ["<SMILES>", "<SELFIES>"]
    assert meta["interns1.tokenizer.FASTA.begin_tags"] == ["<FASTA>"]  # explicit spans, as well as auto-detected
    assert meta["interns1.tokenizer.FASTA.end_tags"] == ["</FASTA>"]


ALPHABET = st.sampled_from(["C", "c", "1", "2", "=", "(", ")", "O", "N", "[", "]", "@", "+", "#", "Cl", "Br", " ",
                            "\n", "é", "e\u0301", "中", "🧪", "<SMILES>", "</SMILES>", "<IUPAC>", "</IUPAC>",
                            "<FASTA>", "</FASTA>",
                            "<MOLFORMULA>", "</MOLFORMULA>", "<|im_end|>", PROTEIN[:9], "ol", "yl", "x", "-"])


@settings(max_examples=300, deadline=None)
@given(st.lists(ALPHABET, max_size=40).map("".join))
def test_round_trip(engine, text) -> None:
    ids = engine.dyntok.encode(text)
    assert b"".join(engine.piece(i) for i in ids).decode() == unicodedata.normalize("NFC", text)


SMILES_ALPHABET = st.sampled_from(["C", "c", "Cl", "Ca", "Cb", "Cx", "H", "He", "X", "Xe", "Zz", "n", "e", "1", "%12",
                                   "=", ":", ".", "-", "#", "(", ")", "[", "]", "[C@@H]", "[a b]", "@", "+", "/", "\\",
                                   "$", " ", "\n", "x", "é", "٣", "q"])


# The periodic table, written out here (not imported from the module under test), period by period.
PERIODIC_TABLE = """H He
Li Be B C N O F Ne
Na Mg Al Si P S Cl Ar
K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr
Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe
Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn
Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og""".split()
AROMATIC_ATOMS = ["b", "c", "n", "o", "p", "s"]  # OpenSMILES' aromatic organic subset
# bonds, branches, ring digits, charges, chirality, as the reference's character class lists them
SMILES_SPECIALS = r"[\(\)\.=\-#@\d\$\%\*:\+\-\/\\]"


def _reference_smiles_run():
    """The detection pattern as SPEC 5 describes the reference's: runs of >= 10 units, each a bracket atom, an
    element symbol (every two-letter one, then every one-letter one, each its own alternative, longest first), an
    aromatic atom or a bond/ring/branch character, not starting or ending with ':', '.' or '='."""
    import re

    symbols = sorted(PERIODIC_TABLE + AROMATIC_ATOMS, key=lambda s: (-len(s), s))
    return re.compile(rf"(?![:.=])(?>(?:\[[^\]]+\]|{'|'.join(symbols)}|{SMILES_SPECIALS})){{10,}}(?<![:.=])")


def test_the_periodic_table_is_whole() -> None:
    assert len(PERIODIC_TABLE) == len(set(PERIODIC_TABLE)) == 118


@settings(max_examples=600, deadline=None)
@given(st.lists(SMILES_ALPHABET, max_size=80).map("".join))
def test_smiles_detection_finds_what_the_reference_pattern_finds(text) -> None:
    """Our faster pattern, and its search only inside looser runs, find exactly the reference pattern's runs over the
    whole text (brackets holding spaces or opened inside another bracket, symbols glued to other letters, unicode
    digits)."""
    from interns1_local.runtime.smiles import SMILES_RUN, smiles_runs

    expected = [m.span() for m in _reference_smiles_run().finditer(text)]
    assert [m.span() for m in SMILES_RUN.finditer(text)] == expected
    assert [m.span() for m in smiles_runs(text)] == expected


def test_without_the_keys_it_is_plain_bpe(mini_ckpt, tmp_path) -> None:
    """A checkpoint without domain models converts without the keys; its tokens are llama.cpp's own."""
    from interns1_local.converters.convert import ConvertOptions, convert
    from tokenizer_corpus import corpus

    plain = tmp_path / "plain"
    shutil.copytree(mini_ckpt, plain, ignore=shutil.ignore_patterns("tokenizer_*.model"))
    result = convert(plain, tmp_path / "gguf", ConvertOptions("f16", "f16"))
    engine = Engine(result.model.path, LoadOptions(n_ctx=256))
    try:
        assert engine.dyntok is None
        texts = corpus()
        assert [engine.tokenize(t) for t in texts] == [engine.backend.tokenize(t) for t in texts]
    finally:
        engine.close()


def test_switching_it_off(files) -> None:
    text = "Describe <SMILES>C1=CC=C(C=C1)C=O</SMILES>"
    on, off = tokenize_text(files.model.path, text), tokenize_text(files.model.path, text, dynamic=False)
    assert any(s.domain == "SMILES" for s in on)
    off_ids = [i for s in off for i in s.ids]
    assert 151925 in off_ids and not any(o <= i < o + 256 for i in off_ids for o in OFFSETS.values())


def test_spec_example_with_real_models() -> None:
    """SPEC 5's reference ids need Intern-S1's real tokenizer: set INTERNS1_REAL_GGUF to a GGUF converted from it."""
    path = os.environ.get("INTERNS1_REAL_GGUF")
    if not path:
        pytest.skip("INTERNS1_REAL_GGUF is not set: no real Intern-S1 tokenizer files here (Hugging Face is "
                    "unreachable); SPEC 5's example is checked against the synthetic models' rules instead")
    text = "Describe <SMILES>C1=CC=C(C=C1)C=O</SMILES> and CC1=CC=CC=C1C=O"
    ids = [i for s in tokenize_text(Path(path), text) for i in s.ids]
    assert ids == [74785, 220, 151925, 151854, 151860, 151698, 151707, 151860, 151690, 151726, 151926, 323, 220,
                   151672, 151860, 151701, 151860, 151854, 151726]


def test_engine_multi_turn_with_domain_ids(engine) -> None:
    """Domain ids in the prompt: the cache is reused across turns and the result equals a fresh context's."""
    greedy = Sampling(temperature=0, max_tokens=8)
    messages = [{"role": "user", "content": f"Compare <SMILES>CC(=O)OC1=CC=CC=C1C(=O)O</SMILES> with {PROTEIN}"}]
    prompt = engine.template.render(messages, add_generation_prompt=True, enable_thinking=False)
    assert any(i >= OFFSETS["SMILES"] for i in engine.tokenize(prompt))
    first = None
    with engine.conversation() as conv:
        for turn in range(2):
            events = list(conv.generate(messages, thinking=False, sampling=greedy))
            with engine.conversation() as fresh:
                alone = list(fresh.generate(messages, thinking=False, sampling=greedy))
            assert events[-1].tokens == alone[-1].tokens
            if first is not None:
                assert events[-1].stats.cached_tokens >= first.prompt_tokens
            first = events[-1].stats
            text = "".join(getattr(e, "text", "") for e in events[:-1])
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "<IUPAC>ethanol</IUPAC>?"}]


def test_cli_tokenize(files) -> None:
    import subprocess
    import sys

    cli = [sys.executable, "-m", "interns1_local", "tokenize", str(files.model.path)]
    text = "Aspirin is <SMILES>CC(=O)OC1=CC=CC=C1C(=O)O</SMILES>."
    done = subprocess.run([*cli, text, "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    segments = json.loads(done.stdout)
    assert [s["domain"] for s in segments] == [None, "special", "SMILES", "special", None]
    assert "".join(s["text"] for s in segments) == text
    plain = json.loads(subprocess.run([*cli, text, "--json", "--no-dynamic-tokenizer"], capture_output=True,
                                      text=True, timeout=120).stdout)
    assert [s["domain"] for s in plain] == [None]
    shown = subprocess.run(cli, input=text, capture_output=True, text=True, timeout=120)  # from stdin, coloured
    assert shown.returncode == 0 and "tokens:" in shown.stdout
