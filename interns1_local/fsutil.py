"""Filesystem helpers: outputs appear whole or not at all, and disk space is checked before writing."""

from __future__ import annotations

import contextlib
import re
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import OutputError


def prepare_output_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` if needed and prove that a file can be created in it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".interns1-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output directory is not writable ({exc.strerror or exc}); choose another with -o", out_dir) from exc
    return out_dir


def ensure_free_space(out_dir: Path, needed_bytes: int, margin_bytes: int = 16 * 2**20) -> None:
    """Fail before writing anything when the filesystem of ``out_dir`` cannot hold ``needed_bytes``."""
    free = shutil.disk_usage(out_dir).free
    if free < needed_bytes + margin_bytes:
        raise OutputError(
            f"not enough free disk: need {format_bytes(needed_bytes + margin_bytes)}, "
            f"{format_bytes(free)} free; free space or choose another directory with -o",
            out_dir,
        )


def partial_path(final: Path) -> Path:
    """Where ``final`` is written before it is complete (hidden, same directory so the rename is atomic)."""
    return final.with_name(f".{final.name}.partial")


@contextlib.contextmanager
def atomic_outputs(finals: Sequence[Path]) -> Iterator[list[Path]]:
    """Yield temporary paths for ``finals``; rename them all on success, delete them all on any failure.

    KeyboardInterrupt is a BaseException, so Ctrl-C leaves nothing behind either.
    """
    temps = [partial_path(p) for p in finals]
    try:
        yield temps
        for tmp, final in zip(temps, finals):
            os.replace(tmp, final)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def parse_size(text: str) -> int:
    """'500M', '4G', '1.5GiB', '1000000' -> bytes (K/M/G/T decimal as in llama.cpp's gguf-split; Ki/Mi/Gi binary)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?)?B?\s*", text.upper())
    if not m or float(m[1]) <= 0:
        raise ValueError(f"invalid size {text!r}: use a number with an optional unit, e.g. 500M, 4G, 1.5GiB")
    return int(float(m[1]) * _UNITS[m[2] or ""])


def format_bytes(n: float) -> str:
    """Human-readable size, binary units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
