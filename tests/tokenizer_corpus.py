"""A deterministic corpus for tokenizer parity: code, CJK, emoji, whitespace runs, digits, special tokens, chemistry."""

from __future__ import annotations

import random

CODE = [
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }", "SELECT * FROM t WHERE id=42;",
    "import numpy as np\nnp.zeros((3, 4), dtype=np.float32)", "fn main() -> Result<(), Box<dyn Error>> {}",
    "<div class=\"x\">&nbsp;</div>", "x = {'a': [1, 2.5e-3, None], \"b\": True}", "#include <stdio.h>\r\n",
    "const f = async () => await fetch(`/api/${id}`);", "if __name__ == '__main__':\n\tmain()",
]
CJK = ["量子力学的基本原理是什么？", "これは日本語の文章です。", "한국어 문장입니다.", "化学反应速率与温度的关系",
       "苯甲醛的分子式是C7H6O", "蛋白质折叠问题", "（全角括号）与「引号」"]
EMOJI = ["💡", "🧪🔬", "👩‍🔬", "🇨🇳🇫🇷", "❤️", "😀😃😄", "🚀 launch", "✔︎"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t  \n", "        ", "\u3000", "\xa0"]
DIGITS = ["0", "42", "3.14159", "1,000,000", "2026-11-22", "6.022e23", "-17", "123456789012345", "0x1F", "½"]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<IMG_CONTEXT>", "<img>", "</img>",
           "<|action_start|>", "<|plugin|>", "<|action_end|>", "<SMILES>", "</SMILES>", "<FASTA>", "</FASTA>",
           "<IUPAC>", "</IUPAC>", "<MOLFORMULA>", "</MOLFORMULA>", "<tool_call>"]
CHEM = ["C1=CC=C(C=C1)C=O", "CC(=O)OC1=CC=CC=C1C(=O)O", "[NH4+].[Cl-]", "O=C=O", "C[C@@H](N)C(=O)O",
        "2-acetoxybenzoic acid", "H2SO4 + 2NaOH -> Na2SO4 + 2H2O", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEK",
        "ΔG = ΔH − TΔS", "k = A·exp(−Eₐ/RT)", "Fe³⁺ + e⁻ → Fe²⁺", "CH₃COOH"]
WORDS = ["The", "quick", "brown", "fox", "Intern-S1", "model's", "don't", "I'm", "we'll", "they've", "naïve", "café",
         "Straße", "résumé", "ÆØÅ", "Ω", "über", "HELLO", "hello", "Hello", "'s", "x", "ok"]

POOLS = [CODE, CJK, EMOJI, SPACES, DIGITS, SPECIAL, CHEM, WORDS]


def corpus(n: int = 600, seed: int = 1234) -> list[str]:
    """Every pool item on its own, then ``n`` random mixtures of them."""
    rng = random.Random(seed)
    items = [s for pool in POOLS for s in pool]
    out = list(items)
    while len(out) < n + len(items):
        parts = [rng.choice(rng.choice(POOLS)) for _ in range(rng.randint(2, 8))]
        joiners = [rng.choice(["", " ", "\n", "  ", "\t"]) for _ in parts]
        out.append("".join(p + j for p, j in zip(parts, joiners)))
    return out
