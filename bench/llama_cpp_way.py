"""llama.cpp's own path to a quantised GGUF, for comparison: ``convert_hf_to_gguf.py`` to BF16, then
``llama_model_quantize``. The scripts come from the llama.cpp sources vendored in llama-cpp-python's sdist on PyPI
(fetched into a cache directory, never committed here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "interns1-local" / f"llama.cpp-{VERSION}"
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def llama_cpp_sources() -> Path:
    """The vendored llama.cpp tree (only the converter and gguf-py), downloaded once."""
    root = CACHE / "llama.cpp"
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={VERSION}", "-d", str(CACHE)], check=True)
    sdist = next(CACHE.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                   and m.name[len(prefix):].startswith(KEEP) and (m.isfile() or m.isdir())]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(root, members=members, filter="data")
    return root


def checkpoint_for_llama_cpp(ckpt: Path, work: Path) -> Path:
    """A view of ``ckpt`` that llama.cpp's converter can read: it loads the tokenizer with
    ``AutoTokenizer(trust_remote_code=True)``, and a synthetic checkpoint ships no remote code, so the view names
    transformers' stock Qwen2Tokenizer (same vocab.json and merges.txt). Weights are symlinked, not copied."""
    view = work / f"{ckpt.name}-for-llama.cpp"
    view.mkdir(parents=True, exist_ok=True)
    for f in ckpt.iterdir():
        if f.name != "tokenizer_config.json" and not (view / f.name).exists():
            (view / f.name).symlink_to(f.resolve())
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    config.pop("auto_map", None)
    config["tokenizer_class"] = "Qwen2Tokenizer"
    (view / "tokenizer_config.json").write_text(json.dumps(config))
    return view


QUANTIZE = """
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
params.nthread = 0
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params)
sys.exit(rc)
"""
