"""llama.cpp's own quantiser, ``llama_model_quantize``, driven through ctypes with everything llama-quantize's
CLI passes it: file type, importance matrix, ``--tensor-type`` overrides, output and embedding types. In this
llama.cpp the imatrix and overrides are plain NULL-terminated C arrays, so no C++ container is needed."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

Q = GGMLQuantizationType


@dataclass(frozen=True)
class QuantizeArgs:
    """llama-quantize's options that reach ``llama_model_quantize`` (besides the file type)."""

    imatrix: dict[str, np.ndarray] | None = None
    overrides: tuple[tuple[str, Q], ...] = ()  # --tensor-type, already parsed
    output_type: Q | None = None  # --output-tensor-type
    token_embd_type: Q | None = None  # --token-embedding-type


def llama_quantize(src: Path, dst: Path, ftype: LlamaFileType, args: QuantizeArgs = QuantizeArgs(),
                   threads: int = 0) -> int:
    """Run llama.cpp's ``llama_model_quantize`` (0 on success), with the C arrays llama-quantize would build.
    ``threads`` 0: all cores."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = int(ftype)
    if args.output_type is not None:
        params.output_tensor_type = int(args.output_type)
    if args.token_embd_type is not None:
        params.token_embedding_type = int(args.token_embd_type)
    imatrix, overrides = args.imatrix, args.overrides
    keep: list[object] = []  # the C arrays must outlive the call
    if imatrix is not None:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # zeroed: the last one terminates
        for i, (name, values) in enumerate(imatrix.items()):
            data = np.ascontiguousarray(values, dtype=np.float32)
            keep += [data, name.encode()]
            arr[i].name, arr[i].size = keep[-1], data.size
            arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr)
    if overrides:
        tt = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()  # zeroed: a NULL pattern ends it
        for i, (pattern, qtype) in enumerate(overrides):
            keep.append(pattern.encode())
            tt[i].pattern, tt[i].type = keep[-1], int(qtype)
        params.tt_overrides = ctypes.cast(tt, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(tt)
    return llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))


def requantize(source: Path, target: Path, ftype: str, imatrix: Path | None = None,
               tensor_types: tuple[str, ...] = (), threads: int = 0) -> None:
    """``interns1 quantize``: llama_model_quantize from ``source`` to ``target``, written to a temporary name and
    renamed when complete; every option is validated before llama.cpp runs."""
    from interns1_local.errors import GGUFFileError, OutputError
    from interns1_local.fsutil import atomic_outputs
    from interns1_local.model_file import open_model

    from .imatrix import read_imatrix
    from .llama_policy import file_type, parse_tensor_type

    kind = file_type(ftype)
    overrides = tuple(parse_tensor_type(t) for t in tensor_types)
    values = read_imatrix(imatrix) if imatrix is not None else None
    open_model(source)  # a clear error for a missing, damaged or wrong source before llama.cpp reads it
    if target.resolve() == source.resolve():
        raise OutputError("the target must differ from the source", target)
    if kind.needs_imatrix and values is None:
        raise OutputError(f"{kind.name} needs an importance matrix: pass --imatrix FILE", source)
    with atomic_outputs([target]) as (tmp,):
        if llama_quantize(source, tmp, kind.ftype, QuantizeArgs(values, overrides), threads) != 0:
            raise GGUFFileError(f"llama.cpp could not quantise it to {kind.name} (see its log above)", source)
