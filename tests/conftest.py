"""Shared fixtures: one tiny synthetic Intern-S1-mini checkpoint per session, its GGUF conversions, the reference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from interns1_local.converters.convert import ConvertOptions, ConvertResult, convert
from interns1_local.synth import write_checkpoint


@pytest.fixture(scope="session")
def mini_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "Intern-S1-mini-tiny", model="mini", size="tiny")


@pytest.fixture(scope="session")
def converted(mini_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], ConvertResult]:
    """``converted(type, mmproj_type)``: the checkpoint converted once per type pair, cached for the session."""
    cache: dict[tuple[str, str], ConvertResult] = {}
    out_dir = tmp_path_factory.mktemp("gguf")

    def get(out_type: str = "f32", mmproj_type: str = "f32") -> ConvertResult:
        key = (out_type, mmproj_type)
        if key not in cache:
            cache[key] = convert(mini_ckpt, out_dir / f"{out_type}-{mmproj_type}", ConvertOptions(out_type, mmproj_type))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def reference(mini_ckpt: Path):
    from reference import load_reference

    return load_reference(mini_ckpt)
