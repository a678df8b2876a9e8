"""Is this run of characters a SMILES string? The rules Intern-S1's tokenizer applies before it hands a run to the
SMILES model: a run of >= 10 SMILES units (bracket atoms, element symbols, bond/ring/branch characters) not starting
or ending with ``:``, ``.`` or ``=``; at least 5 ASCII letters; then RDKit's parser when RDKit is installed, otherwise
hand rules on rings, brackets and bonds (reproduced here rule for rule, quirks included, so the spans are the same).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

BONDS = frozenset("-=#:/\\.$")
ORGANIC = ("B", "C", "N", "O", "P", "S", "F", "Cl", "Br", "I")
AROMATIC = ("b", "c", "n", "o", "s", "p")
ALLOWED = frozenset(ORGANIC + AROMATIC + tuple(BONDS) + ("[", "]", "(", ")", ";"))
ELEMENTS = frozenset(
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr "
    "Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt "
    "Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv "
    "Ts Og".split())
SPECIALS = r"[\(\)\.=\-#@\d\$\%\*:\+\-\/\\]"  # bonds, branches, rings, charges, chirality


def _symbol_alternatives() -> list[str]:
    """The detection pattern's element alternatives, written for speed: the reference lists every two-letter symbol,
    then the one-letter organic ones, each as its own alternative; here one alternative per first letter, e.g.
    ``B[aehikr]?`` for Ba Be Bh Bi Bk Br and B. Within an atomic unit both take two letters where a two-letter symbol
    matches and one otherwise (the reference's form is rebuilt in tests/test_dyntok.py and compared)."""
    seconds: dict[str, str] = {}
    for symbol in sorted(e for e in ELEMENTS if len(e) == 2):
        seconds[symbol[0]] = seconds.get(symbol[0], "") + symbol[1]
    alone = set("BCFHIKNOPSUVWY")
    return [first + (f"[{seconds[first]}]" + ("?" if first in alone else "") if first in seconds else "")
            for first in sorted(set(seconds) | alone)] + [f"[{''.join(AROMATIC)}]"]


_UNIT = rf"(?:\[[^\]]+\]|{'|'.join(_symbol_alternatives())}|{SPECIALS})"
SMILES_RUN = re.compile(rf"(?![:.=])(?>{_UNIT}){{10,}}(?<![:.=])")  # atomic units: Python >= 3.11
# A looser run: any capital with an optional small letter, an aromatic letter, a special character or a bracket atom,
# not atomic. Every unit SMILES_RUN reads is one of these, and which one never changes where the next unit starts, so
# every run SMILES_RUN finds lies inside one of these runs; SMILES_RUN is tried only there (prose words mostly fail at
# their first small letter that is not aromatic).
_LOOSE_RUN = re.compile(rf"(?:[A-Z][a-z]?|[{''.join(AROMATIC)}]|{SPECIALS}|\[[^\]]+\]){{10,}}")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_BRACKET_WORD = re.compile(r"(?:[A-GI-Z]|[a-z]){3,}")
_BRACKET_NUMBER = re.compile(r"\d{4,}")


@functools.cache
def _rdkit():  # noqa: ANN202 - the module or None
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        return None
    RDLogger.DisableLog("rdApp.*")
    return Chem


def looks_like_smiles(candidate: str) -> bool:
    if len(_ASCII_LETTER.findall(candidate)) < 5:
        return False
    chem = _rdkit()
    if chem is not None:
        return chem.MolFromSmiles(candidate) is not None
    return _rings_and_brackets(candidate)


def smiles_runs(text: str) -> Iterator[re.Match[str]]:
    """What ``SMILES_RUN.finditer(text)`` finds, found faster."""
    for region in _LOOSE_RUN.finditer(text):
        yield from SMILES_RUN.finditer(text, region.start(), region.end())


def _toggle(rings: dict[str, bool], label: str) -> None:
    rings[label] = not rings.get(label, False)  # True: open


def _rings_and_brackets(text: str) -> bool:
    rings: dict[str, bool] = {}
    open_sq = close_sq = open_par = close_par = digits = 0
    all_lower, pos, n = True, 0, len(text)
    while pos < n:
        c, step = text[pos], 0
        if "A" <= c <= "Z":
            all_lower = False
        if c in BONDS and pos in (0, n - 1):
            return False
        if pos > 0 and text[pos - 1] in BONDS and c in BONDS:
            return False
        if c == "[":
            step, open_sq = 1, open_sq + 1
            if open_sq > close_sq + 1 or pos == n - 1 or "]" not in text[pos + 1:]:
                return False
            inside = text[pos + 1: text.find("]")]  # the first "]" of the whole run, as the reference looks
            if _BRACKET_WORD.search(inside) or _BRACKET_NUMBER.search(inside) or len(re.findall(r"\d+", inside)) > 2:
                return False
        if c == "]":
            step, close_sq = 1, close_sq + 1
            if close_sq > open_sq:
                return False
        if c == "(":
            step, open_par = 1, open_par + 1
        if c == ")":
            step, close_par = 1, close_par + 1
            if close_par > open_par:
                return False
        if open_sq == close_sq:
            if c.isdigit():
                digits, step = digits + 1, 1
                if pos == 0 or (pos == 1 and text[0] != "%") or (pos > 1 and "%" not in text[pos - 2: pos]):
                    _toggle(rings, c)
            if c == "%":
                if pos >= n - 2 or not text[pos + 1].isdigit() or not text[pos + 2].isdigit():
                    return False
                step, digits = 3, digits + 1
                _toggle(rings, text[pos + 1: pos + 3])
            if step == 0:
                if pos < n - 1 and text[pos: pos + 2] in ALLOWED:
                    step = 2
                elif c in ALLOWED:
                    step = 1
                else:
                    return False
        pos += step or 1
    if open_sq != close_sq or any(rings.values()) or (all_lower and digits < 2):
        return False
    return _brackets(text)


def _brackets(text: str) -> bool:
    for part in re.findall(r"\[([^\[\]]*)\]", text):
        if "(" in part or ")" in part or not part:
            return False
        if part[0] in ELEMENTS or part[0] in AROMATIC or part[:2] in ELEMENTS:
            return True
    return True
