"""Shared fixtures: tiny synthetic checkpoints (built once per session), their GGUF conversions, the reference."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from interns1_local.converters.convert import ConvertOptions, ConvertResult, convert
from interns1_local.synth import write_checkpoint, write_image


@pytest.fixture(scope="session", autouse=True)
def _high_level_api_without_amx():
    """llama-cpp-python's ``Llama`` (used here to load references) has no switch for llama.cpp's extra buffer types,
    and on CPUs whose build has the AMX buffer type its default placement segfaults on any multi-token batch
    (llama.cpp#20824; see runtime/placement.py). There, ``Llama`` loads with plain host memory; elsewhere unchanged."""
    import llama_cpp.llama_cpp as bindings

    from interns1_local.runtime import ggml_c, placement

    if placement.AMX not in [ggml_c.buffer_type_name(b) for b in ggml_c.extra_buffer_types()]:
        yield
        return
    default = bindings.llama_model_default_params

    def plain():
        params = default()
        params.use_extra_bufts = False
        return params

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bindings, "llama_model_default_params", plain)
        yield


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``checkpoint(model, fp8=False, size="tiny", layout="original")``: a small synthetic checkpoint, written once
    per session."""
    cache: dict[tuple[str, bool, str, str], Path] = {}

    def get(model: str = "mini", fp8: bool = False, size: str = "tiny", layout: str = "original") -> Path:
        if (model, fp8, size, layout) not in cache:
            name = f"Intern-S1-{model}-{size}{'-FP8' if fp8 else ''}{'' if layout == 'original' else '-' + layout}"
            cache[model, fp8, size, layout] = write_checkpoint(tmp_path_factory.mktemp("ckpt") / name, model=model,
                                                               size=size, fp8=fp8, layout=layout)
        return cache[model, fp8, size, layout]

    return get


@pytest.fixture(scope="session")
def convert_once(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ConvertResult]:
    """``convert_once(ckpt, type, mmproj_type)``: each conversion done once per session."""
    cache: dict[tuple[Path, str, str], ConvertResult] = {}

    def get(ckpt: Path, out_type: str = "f32", mmproj_type: str = "f32") -> ConvertResult:
        key = (ckpt, out_type, mmproj_type)
        if key not in cache:
            out_dir = tmp_path_factory.mktemp(f"gguf-{ckpt.name}-{out_type}-{mmproj_type}")
            cache[key] = convert(ckpt, out_dir, ConvertOptions(out_type, mmproj_type))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def mini_ckpt(checkpoint) -> Path:
    return checkpoint("mini")


@pytest.fixture(scope="session")
def converted(mini_ckpt: Path, convert_once) -> Callable[[str, str], ConvertResult]:
    """``converted(type, mmproj_type)``: the mini checkpoint's conversions."""
    return lambda out_type="f32", mmproj_type="f32": convert_once(mini_ckpt, out_type, mmproj_type)


@pytest.fixture(scope="session")
def reference(mini_ckpt: Path):
    from reference import load_reference

    return load_reference(mini_ckpt)


@pytest.fixture(scope="session")
def png_b64(tmp_path_factory) -> str:
    """A small PNG (a gradient), base64 encoded, as the server tests send images."""
    return base64.b64encode(write_image(tmp_path_factory.mktemp("png") / "grad.png").read_bytes()).decode()
