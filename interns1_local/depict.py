"""A SMILES string drawn as a 2D structure (SVG) by RDKit, for the chat page; RDKit is an optional extra
(``pip install interns1-local[smiles]``).

RDKit's own parser decides what is valid; its coordinates (``rdDepictor``) and its SVG writer draw. The SVG is text
that the page shows through an ``<img>``, where no script in it could run.
"""

from __future__ import annotations

import functools
from types import ModuleType

from .errors import DepictionError, DepictionUnavailable
from .runtime.smiles import SMILES_RUN, looks_like_smiles

MAX_SMILES = 500  # characters; RDKit lays out larger molecules, slowly, and a page shows them unreadably small
SIZE = (320, 220)  # pixels; the SVG scales


@functools.cache
def _rdkit() -> ModuleType | None:
    try:
        import rdkit.Chem  # noqa: F401 - the submodules below hang off it
        from rdkit import RDLogger
        from rdkit.Chem.Draw import rdMolDraw2D  # noqa: F401
    except ImportError:
        return None
    RDLogger.DisableLog("rdApp.*")  # a bad SMILES is our 400, not lines on the server's stderr
    import rdkit

    return rdkit


def available() -> bool:
    return _rdkit() is not None


def is_smiles_span(text: str) -> bool:
    """Would Intern-S1's dynamic tokenizer read all of ``text`` as one SMILES span (the same run pattern and checks
    as its detector, runtime/dyntok.py), with RDKit's parser when it is installed and the reference's rules when not."""
    return SMILES_RUN.fullmatch(text) is not None and looks_like_smiles(text)


def depict_svg(smiles: str, size: tuple[int, int] = SIZE) -> str:
    """The structure as SVG text. ``DepictionUnavailable`` without RDKit; ``DepictionError`` for what RDKit cannot
    parse, or an empty or over-long string."""
    rdkit = _rdkit()
    if rdkit is None:
        raise DepictionUnavailable("drawing molecules needs RDKit, which is not installed: "
                                   "pip install 'interns1-local[smiles]' (or pip install rdkit)")
    if not smiles.strip() or len(smiles) > MAX_SMILES:
        raise DepictionError(f"a SMILES string of 1 to {MAX_SMILES} characters is needed (got {len(smiles)})")
    mol = rdkit.Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        raise DepictionError(f"RDKit cannot parse {smiles[:60]!r} as SMILES")
    drawer = rdkit.Chem.Draw.rdMolDraw2D.MolDraw2DSVG(*size)
    try:
        rdkit.Chem.Draw.rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol)
    except (RuntimeError, ValueError) as exc:  # what RDKit's Python wrappers raise for a molecule it cannot lay out
        raise DepictionError(f"RDKit cannot draw {smiles[:60]!r}: {exc}") from None
    drawer.FinishDrawing()
    return drawer.GetDrawingText()
