"""Generated training text for the synthetic domain tokenizers (SMILES, IUPAC names, protein sequences).

Plausible-looking strings, not chemistry: they only need the character statistics of each domain so that the
SentencePiece models learn multi-character pieces.
"""

from __future__ import annotations

import random

_SMILES_FRAGMENTS = ["C", "CC", "C(=O)", "O", "N", "c1ccccc1", "C1=CC=CC=C1", "Cl", "Br", "F", "C#N", "[NH3+]",
                     "C(=O)O", "S(=O)(=O)", "c1ccncc1", "[C@@H]", "[C@H]", "OC", "N(C)C", "C=C", "/C=C/", "CO"]
_IUPAC_PARTS = ["meth", "eth", "prop", "but", "pent", "hex", "benz", "cyclo", "hydroxy", "amino", "chloro",
                "bromo", "fluoro", "nitro", "oxo", "methyl", "ethyl", "phenyl", "carbox", "yl", "an", "ene", "yne",
                "ol", "al", "one", "oic acid", "amide", "ate", "di", "tri", "tetra", "iso", "sec-", "tert-", "-2-",
                "-1-", "-3-", "-4-", "(", ")", ",", " "]
_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def smiles(rng: random.Random) -> str:
    return "".join(rng.choice(_SMILES_FRAGMENTS) for _ in range(rng.randint(3, 12)))


def iupac(rng: random.Random) -> str:
    return "".join(rng.choice(_IUPAC_PARTS) for _ in range(rng.randint(3, 10))).strip()


def protein(rng: random.Random) -> str:
    # Motif reuse gives the BPE trainer repeated substrings to merge.
    motifs = ["".join(rng.choice(_AMINO_ACIDS) for _ in range(rng.randint(2, 6))) for _ in range(40)]
    return "".join(rng.choice(motifs) for _ in range(rng.randint(8, 30)))


GENERATORS = {"SMILES": smiles, "IUPAC": iupac, "FASTA": protein}


def domain_corpus(domain: str, seed: int, n: int = 600) -> list[str]:
    """``n`` generated strings of one domain, deterministic in ``seed``."""
    rng = random.Random(f"{domain}-{seed}")
    return [GENERATORS[domain](rng) for _ in range(n)]
