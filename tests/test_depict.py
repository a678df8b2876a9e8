"""Molecule drawings (interns1_local/depict.py): RDKit's SVG, the errors, and the code-span rule, which must be the
dynamic tokenizer's own detector (runtime/dyntok.py) applied to the whole span."""

from __future__ import annotations

import pytest

from interns1_local.depict import MAX_SMILES, depict_svg, is_smiles_span
from interns1_local.errors import DepictionError
from interns1_local.runtime.dyntok import _smiles_candidates

pytest.importorskip("rdkit", reason="the smiles extra (rdkit) is not installed")

# (span, what the page should do with it as a code span); the detector's own verdict is checked below
CASES = [
    ("CC1=CC=CC=C1C=O", True),  # SPEC 5's example
    ("CC(=O)Oc1ccccc1C(=O)O", True),  # aspirin
    ("C1=CC=C(C=C1)C=O", True),
    ("[Na+].[Cl-]", False),  # three units: under the run's 10
    ("c1ccccc1", False),  # benzene: 8 units
    ("CCCCCCCCCCC", True),
    ("CCCC=CCCCC=", False),  # a run may not end with =
    ("print(x, y)", False),
    ("hello_world_function", False),
    ("C1CCCCC1CCC(", False),  # RDKit: unclosed branch
    ("OCCOCCOCCOCCO", True),
]


@pytest.mark.parametrize(("span", "expected"), CASES)
def test_code_span_rule_is_the_tokenizers_detector(span, expected) -> None:
    whole = [m.span() for m in _smiles_candidates(span, 10)] == [(0, len(span))]
    assert is_smiles_span(span) == whole == expected


def test_depiction_is_svg_and_refuses_what_rdkit_cannot_read() -> None:
    svg = depict_svg("CCO")
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "</svg>" in svg
    for bad in ("C1CC(", "", "   ", "X" * (MAX_SMILES + 1)):
        with pytest.raises(DepictionError):
            depict_svg(bad)
