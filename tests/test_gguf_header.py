"""The fast header reader agrees with gguf-py's GGUFReader, and refuses damaged files with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader

from interns1_local.errors import GGUFFileError
from interns1_local.gguf_header import ArraySummary, read_header


def test_matches_gguf_py(converted) -> None:
    path = converted("q8_0", "f16").mmproj.path  # small: GGUFReader is slow on the 153k-token model files
    ours = read_header(path, max_array=None)
    ref = GGUFReader(path)
    assert ours.metadata == {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert [(t.name, t.shape, t.ggml_type, t.nbytes, ours.data_offset + t.offset) for t in ours.tensors] == [
        (t.name, tuple(int(d) for d in reversed(t.shape.tolist())), t.tensor_type, int(t.n_bytes), int(t.data_offset))
        for t in ref.tensors]


def test_long_arrays_are_summarised(converted) -> None:
    header = read_header(converted("q8_0", "f16").model.path)
    assert header.metadata["tokenizer.ggml.tokens"] == ArraySummary(153216, "string")
    assert header.metadata["general.architecture"] == "qwen3"


@pytest.mark.parametrize("cut", [3, 30, 5000, 200_000])
def test_truncated_files_are_refused(converted, tmp_path: Path, cut: int) -> None:
    data = converted("q8_0", "f16").model.path.read_bytes()[:cut]
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data)
    with pytest.raises(GGUFFileError, match="truncated|not a readable"):
        read_header(bad)
