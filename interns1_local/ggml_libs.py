"""Where the ggml libraries that llama-cpp-python ships live, found without importing llama_cpp (which loads libllama).

Soname first: libllama and libggml-cpu link against e.g. "libggml-base.so.0", and the wheel ships the .so names as
copies, not symlinks. Opening the soname file makes the dynamic loader reuse the copy llama.cpp already loaded (one
set of IQ lookup tables, one backend registry per process); opening another copy would duplicate them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAMES = {
    "linux": ["lib{}.so.0", "lib{}.so"],
    "darwin": ["lib{}.0.dylib", "lib{}.dylib"],
    "win32": ["{}.dll"],
}


def ggml_lib_path(stem: str) -> Path:
    """``stem`` is "ggml-base" or "ggml": that library inside the installed llama_cpp package."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise RuntimeError("llama-cpp-python is not installed; it provides the ggml libraries")
    lib_dir = Path(spec.origin).parent / "lib"
    for name in _NAMES.get(sys.platform, _NAMES["linux"]):
        if (lib_dir / name.format(stem)).is_file():
            return lib_dir / name.format(stem)
    raise RuntimeError(f"no lib{stem} in {lib_dir}: this llama-cpp-python build does not ship it")
