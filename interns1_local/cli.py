"""The ``interns1`` command. Each command parses, calls one library function, prints."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .errors import (ChatTemplateError, CheckpointError, ContextFullError, GGUFFileError, ImageError, InternS1Error,
                     ModelFileError, OutputError, PlanError, RpcError, UnsupportedTypeError, UsageError, VideoError)
from .fsutil import format_bytes, parse_size

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Run InternLM's Intern-S1 family locally: convert checkpoints to GGUF, inspect, chat.")
out = Console()
err = Console(stderr=True)

# Every library error maps to an exit code here, and only here. 2: the input or the request is wrong.
EXIT_CODES: dict[type[InternS1Error], int] = {
    CheckpointError: 2, PlanError: 2, OutputError: 2, GGUFFileError: 2, UnsupportedTypeError: 2, UsageError: 2,
    ImageError: 2, ChatTemplateError: 2, ContextFullError: 2, ModelFileError: 2, RpcError: 2, VideoError: 2,
}
F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn library errors into one line on stderr and an exit code; INTERNS1_DEBUG=1 shows tracebacks."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InternS1Error as exc:
            if os.environ.get("INTERNS1_DEBUG"):
                raise
            err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(EXIT_CODES.get(type(exc), 1)) from None
        except KeyboardInterrupt:
            err.print("interrupted: nothing was left behind")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@handle_errors
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Directory to create (must not exist or be empty).")],
    model: Annotated[str, typer.Option(help="Layout: mini (Qwen3 + InternViT-300M) or s1 (Qwen3-MoE + InternViT-6B).")] = "mini",
    size: Annotated[str, typer.Option(help="tiny (tests, ~160 MB) or bench (mini >= 1 GB, s1 ~12 GB).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Random seed for the weights.")] = 0,
    fp8: Annotated[bool, typer.Option("--fp8", help="Store LM linear weights as FP8 e4m3 + 128x128 block scales.")] = False,
    layout: Annotated[str, typer.Option(
        help="original (Intern-S1's files) or transformers5 (as transformers 5 saves it: fused experts).")] = "original",
) -> None:
    """Write a synthetic checkpoint with Intern-S1's real layout and random weights."""
    from .synth import write_checkpoint

    path = write_checkpoint(out_dir, model=model, size=size, seed=seed, fp8=fp8, layout=layout)
    total = sum(f.stat().st_size for f in path.iterdir())
    out.print(f"wrote {path} ({format_bytes(total)})")


def _list_types(value: bool) -> None:
    """--list-types: print the language-model types and exit."""
    if not value:
        return
    from gguf import GGML_QUANT_SIZES

    from .quant.llama_policy import FILE_TYPES

    table = Table("type", "tensors", "bits/weight", "llama.cpp's note", "needs --imatrix", title="language-model types")
    for f in FILE_TYPES.values():
        block, size = GGML_QUANT_SIZES[f.default]
        table.add_row(f.name, f.default.name, f"{size * 8 / block:.2f}", f.description, "yes" if f.needs_imatrix else "")
    out.print(table)
    out.print("bits/weight: of the default tensor type; the _S/_M/_L mixes raise some tensors to higher types.")
    out.print("mmproj types (--mmproj-type): F32, F16, BF16, Q8_0")
    raise typer.Exit()


@app.command()
@handle_errors
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="Hugging Face checkpoint directory (sharded safetensors).")],
    out_dir: Annotated[Path, typer.Option("-o", "--out-dir", help="Where the two GGUF files go.")] = Path("."),
    type_: Annotated[str, typer.Option("--type", help="Language-model type, any of --list-types.")] = "q8_0",
    mmproj_type: Annotated[str, typer.Option(help="Vision projector type: f32, f16, bf16, q8_0.")] = "f16",
    imatrix: Annotated[Path | None, typer.Option(help="llama.cpp importance-matrix file (needed by IQ1-IQ3, Q2_K_S).")] = None,
    tensor_type: Annotated[list[str] | None, typer.Option(
        help="Override a tensor's type: PATTERN=TYPE (regex on GGUF names, e.g. attn_v=q8_0); repeatable.")] = None,
    name: Annotated[str | None, typer.Option(help="Base file name (default: the checkpoint directory's).")] = None,
    split_max_size: Annotated[str | None, typer.Option(
        help="Split the language model into shards of at most this much tensor data (e.g. 4G, 500M).")] = None,
    threads: Annotated[int | None, typer.Option(help="Quantisation threads (default: all cores).", min=1)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    list_types: Annotated[bool, typer.Option("--list-types", callback=_list_types, is_eager=True,
                                             help="List the types with llama.cpp's notes and exit.")] = False,
) -> None:
    """Convert a checkpoint to a language-model GGUF and an mmproj GGUF in one streaming pass."""
    from .converters.convert import ConvertOptions, convert as run_convert, lm_quant
    from .progress import RichProgress
    from .quant.types import get_type

    try:
        split = parse_size(split_max_size) if split_max_size else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = ConvertOptions(out_type=type_, mmproj_type=mmproj_type, name=name, split_max_size=split,
                             imatrix=imatrix, tensor_types=tuple(tensor_type or ()), threads=threads)
    lm_quant(options), get_type(mmproj_type)  # fail on a bad type, pattern or imatrix before reading the model
    if quiet:
        result = run_convert(checkpoint, out_dir, options)
    else:
        with RichProgress(err) as progress:
            result = run_convert(checkpoint, out_dir, options, progress)
    for f in (result.model, result.mmproj):
        for path, shard in zip(f.paths, f.shards):
            out.print(f"{path}  {format_bytes(path.stat().st_size)}  {len(shard)} tensors")
    total = result.model.tensor_bytes + result.mmproj.tensor_bytes
    out.print(f"done in {result.seconds:.1f} s ({total / 2**20 / max(result.seconds, 1e-9):.0f} MB/s written)")


@app.command()
@handle_errors
def quantize(
    source: Annotated[Path, typer.Argument(help="A language-model GGUF (e.g. the BF16 one).")],
    target: Annotated[Path, typer.Argument(help="The GGUF to write.")],
    type_: Annotated[str, typer.Option("--type", help="Any of `interns1 convert --list-types`.")] = "q4_k_m",
    imatrix: Annotated[Path | None, typer.Option(help="llama.cpp importance-matrix file.")] = None,
    tensor_type: Annotated[list[str] | None, typer.Option(help="PATTERN=TYPE override; repeatable.")] = None,
    threads: Annotated[int, typer.Option(help="Threads (0: all cores).", min=0)] = 0,
) -> None:
    """Re-quantise an existing GGUF with llama.cpp's own llama_model_quantize (written atomically)."""
    from .quant.llama_quantize import requantize

    requantize(source, target, type_, imatrix, tuple(tensor_type or ()), threads)
    out.print(f"{target}  {format_bytes(target.stat().st_size)}")


def _print_summary(path: Path, tensors: bool = True) -> None:
    from .inspect import read_summary

    summary = read_summary(path)
    out.print(f"[bold]{path}[/]  architecture [cyan]{summary.architecture}[/]  "
              f"{len(summary.tensors)} tensors, {format_bytes(summary.tensor_bytes)}")
    meta = Table("key", "value", title="metadata", title_justify="left")
    for key, value in summary.metadata.items():
        text = value if isinstance(value, str) else json.dumps(value)
        meta.add_row(key, text if len(text) <= 100 else text[:97] + "...")
    out.print(meta)
    if tensors:
        table = Table("name", "type", "shape", "bytes", title="tensors", title_justify="left")
        for t in summary.tensors:
            table.add_row(t.name, t.type, "x".join(map(str, t.shape)), format_bytes(t.bytes))
        out.print(table)
    else:
        counts = Counter(t.type for t in summary.tensors)
        out.print("tensor types: " + ", ".join(f"{k} x{v}" for k, v in counts.most_common()))


@app.command()
@handle_errors
def inspect(
    file: Annotated[Path, typer.Argument(help="A GGUF file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    full_arrays: Annotated[bool, typer.Option(help="With --json: print long arrays (tokens, merges) whole.")] = False,
) -> None:
    """Show a GGUF file's architecture, metadata and tensors."""
    from .inspect import read_summary

    if as_json:
        sys.stdout.write(json.dumps(read_summary(file, full_arrays).to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        _print_summary(file)


@app.command()
@handle_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the synthetic checkpoint and GGUF files go.")] = Path("interns1-demo"),
    type_: Annotated[str, typer.Option("--type", help="Language-model type.")] = "q8_0",
) -> None:
    """Offline end-to-end run: build a small synthetic Intern-S1-mini, convert it, show what was written, then one
    chat turn with an image and one with a video on the converted files (random weights: the words are noise, the
    timings are real)."""
    from .converters.convert import ConvertOptions, convert as run_convert
    from .progress import RichProgress
    from .synth import write_checkpoint

    ckpt = workdir / "Intern-S1-mini-synthetic"
    if not (ckpt / "model.safetensors.index.json").is_file():
        out.print(f"building a synthetic Intern-S1-mini checkpoint in {ckpt} ...")
        write_checkpoint(ckpt)
    with RichProgress(err) as progress:
        result = run_convert(ckpt, workdir / "gguf", ConvertOptions(out_type=type_), progress)
    out.print(f"converted in {result.seconds:.1f} s")
    for f in (result.model, result.mmproj):
        _print_summary(f.path, tensors=False)
    _demo_media_turns(result.model.path, result.mmproj.path, workdir)


def _demo_media_turns(model: Path, mmproj: Path, workdir: Path) -> None:
    """One chat turn with an image, one with an 8-frame video, on the converted files."""
    from .runtime.backend import LoadOptions
    from .runtime.engine import Engine, Finished, Sampling
    from .synth import write_clip, write_image

    turns = {"image": ({"type": "image", "url": str(write_image(workdir / "demo-image.png"))}, "picture"),
             "video": ({"type": "video", "url": str(write_clip(workdir / "demo-video.mp4", frames=48))}, "video")}
    engine = Engine(model, LoadOptions(mmproj=mmproj, n_ctx=4096))
    try:
        for kind, (part, noun) in turns.items():
            messages = [{"role": "user", "content": [part, {"type": "text", "text": f"What is in this {noun}?"}]}]
            with engine.conversation() as conv:
                done = [e for e in conv.generate(messages, thinking=False,
                                                 sampling=Sampling(temperature=0, max_tokens=32))
                        if isinstance(e, Finished)][0]
            s = done.stats
            seen = sum(i.positions for i in s.images)
            what = f"{len(s.images)} frames" if kind == "video" else "the image"
            out.print(f"{kind} chat turn: prompt {s.prompt_tokens} tokens ({seen} of them {what}) in "
                      f"{s.prompt_seconds:.2f} s, {s.generated_tokens} tokens generated at {s.tokens_per_second:.1f} "
                      "tok/s", highlight=False, soft_wrap=True)
    finally:
        engine.close()


from . import cli_run  # noqa: E402, F401 - registers run, chat, serve, tokenize on ``app``
from . import cli_doctor  # noqa: E402, F401 - registers doctor
from . import cli_rpc  # noqa: E402, F401 - registers rpc-worker


def main() -> None:
    app()
