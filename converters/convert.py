"""``convert``: a Hugging Face Intern-S1 checkpoint -> language-model GGUF + mmproj GGUF, in one streaming pass."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from interns1_local.quant.imatrix import read_imatrix
from interns1_local.quant.llama_policy import file_type, parse_tensor_type
from interns1_local.quant.types import get_type

from interns1_local.fsutil import atomic_outputs, ensure_free_space, prepare_output_dir

from .checkpoint import Checkpoint, open_checkpoint, read_optional_json
from .domain_tokenizer import domain_tokenizer_kvs
from .gguf_out import NoProgress, Progress, split_jobs, write_split
from .metadata import CLIP_RULES, KV, LM_RULES, check_requirements, general_kvs, imatrix_kvs, resolve, tokenizer_kvs
from .plan import LmQuant, ModelLayout, TensorJob, identify, plan_conversion
from .rope import rope_kvs
from .tokenizer import read_tokenizer

METADATA_ALLOWANCE = 32 * 2**20  # tokenizer arrays and headers, generously


@dataclass(frozen=True)
class ConvertOptions:
    out_type: str = "q8_0"  # any llama.cpp file type (``interns1 convert --list-types``)
    mmproj_type: str = "f16"
    name: str | None = None  # defaults to the checkpoint directory's name
    split_max_size: int | None = None  # bytes of tensor data per language-model shard
    imatrix: Path | None = None  # llama.cpp's imatrix file (GGUF or legacy .dat)
    tensor_types: tuple[str, ...] = ()  # "PATTERN=TYPE" overrides, as llama-quantize's --tensor-type
    threads: int | None = None  # quantisation threads (default: all cores)


def lm_quant(options: ConvertOptions) -> LmQuant:
    """Validate the language model's quantisation options (cheap: done before any checkpoint is read)."""
    ftype = file_type(options.out_type)
    overrides = tuple(parse_tensor_type(t) for t in options.tensor_types)
    imatrix = read_imatrix(options.imatrix) if options.imatrix is not None else None
    return LmQuant(ftype, overrides, imatrix)


@dataclass(frozen=True)
class OutputFile:
    """One output model: a single file, or the shards of llama.cpp's split format."""

    paths: list[Path]
    arch: str
    kvs: list[KV]
    shards: list[list[TensorJob]]

    @property
    def path(self) -> Path:
        """The file to load (the first shard of a split model)."""
        return self.paths[0]

    @property
    def jobs(self) -> list[TensorJob]:
        return [j for shard in self.shards for j in shard]

    @property
    def tensor_bytes(self) -> int:
        return sum(j.nbytes for j in self.jobs)


def _shard_paths(out_dir: Path, base: str, n: int) -> list[Path]:
    if n == 1:
        return [out_dir / f"{base}.gguf"]
    return [out_dir / f"{base}-{i + 1:05d}-of-{n:05d}.gguf" for i in range(n)]


@dataclass(frozen=True)
class ConvertResult:
    model: OutputFile
    mmproj: OutputFile
    seconds: float


def plan_outputs(ckpt: Checkpoint, layout: ModelLayout, out_dir: Path, options: ConvertOptions) -> tuple[OutputFile, OutputFile]:
    """Everything that will be written, fully validated: tensors, types and metadata of both files."""
    quant, mm_type = lm_quant(options), get_type(options.mmproj_type)
    lm_jobs, mm_jobs = plan_conversion(ckpt, layout, quant, mm_type)
    name = options.name or ckpt.path.resolve().name
    docs = {
        "cfg": ckpt.config,
        "gen": read_optional_json(ckpt.file("generation_config.json"), "generation_config.json"),
        "pre": read_optional_json(ckpt.file("preprocessor_config.json"), "preprocessor_config.json"),
    }
    check_requirements(layout.requirements, docs)
    rope = rope_kvs(ckpt.text_config, layout.gguf_arch)
    tokenizer = read_tokenizer(ckpt.path, ckpt.config)
    lm_kvs = (general_kvs(name, quant.ftype.ftype, "model")
              + resolve(LM_RULES + layout.text_meta, dict(docs, dims=layout.text.dims(ckpt.config)), layout.gguf_arch)
              + rope
              + tokenizer_kvs(tokenizer) + domain_tokenizer_kvs(ckpt.path, tokenizer)
              + imatrix_kvs(options.imatrix))
    mm_kvs = (general_kvs(f"mmproj-{name}", mm_type.file_type, "mmproj")
              + resolve(CLIP_RULES, dict(docs, dims=layout.vision.dims(ckpt.config))))
    shards = split_jobs(lm_jobs, options.split_max_size)
    return (OutputFile(_shard_paths(out_dir, f"{name}-{quant.ftype.name}", len(shards)), layout.gguf_arch, lm_kvs, shards),
            OutputFile(_shard_paths(out_dir, f"mmproj-{name}-{mm_type.name}", 1), "clip", mm_kvs, [mm_jobs]))


def convert(checkpoint_dir: Path, out_dir: Path, options: ConvertOptions = ConvertOptions(),
            progress: Progress | None = None) -> ConvertResult:
    """Convert the checkpoint at ``checkpoint_dir``; both files appear in ``out_dir`` complete, or neither does."""
    started = time.perf_counter()
    ckpt = open_checkpoint(checkpoint_dir)
    layout = identify(ckpt)
    model, mmproj = plan_outputs(ckpt, layout, out_dir, options)
    prepare_output_dir(out_dir)
    ensure_free_space(out_dir, model.tensor_bytes + mmproj.tensor_bytes + 2 * METADATA_ALLOWANCE)
    progress = progress or NoProgress()
    with atomic_outputs(model.paths + mmproj.paths) as temps:
        write_split(temps[: len(model.paths)], model.arch, model.kvs, model.shards, progress, options.threads)
        write_split(temps[len(model.paths):], mmproj.arch, mmproj.kvs, mmproj.shards, progress, options.threads)
    return ConvertResult(model, mmproj, time.perf_counter() - started)

