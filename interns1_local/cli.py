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

from .errors import (ChatTemplateError, CheckpointError, GGUFFileError, ImageError, InternS1Error, OutputError,
                     PlanError, UnsupportedTypeError, UsageError)
from .fsutil import format_bytes, parse_size

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Run InternLM's Intern-S1 family locally: convert checkpoints to GGUF, inspect, chat.")
out = Console()
err = Console(stderr=True)

# Every library error maps to an exit code here, and only here. 2: the input or the request is wrong.
EXIT_CODES: dict[type[InternS1Error], int] = {
    CheckpointError: 2, PlanError: 2, OutputError: 2, GGUFFileError: 2, UnsupportedTypeError: 2, UsageError: 2,
    ImageError: 2, ChatTemplateError: 2,
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
) -> None:
    """Write a synthetic checkpoint with Intern-S1's real layout and random weights."""
    from .synth import write_checkpoint

    path = write_checkpoint(out_dir, model=model, size=size, seed=seed, fp8=fp8)
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
    chat turn with an image on the converted files (random weights: the words are noise, the timings are real)."""
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
    _demo_image_turn(result.model.path, result.mmproj.path, workdir / "demo-image.png")


def _demo_image_turn(model: Path, mmproj: Path, image: Path) -> None:
    from .runtime.backend import LoadOptions
    from .runtime.engine import Engine, Finished, Sampling
    from .synth import write_image

    write_image(image)
    engine = Engine(model, LoadOptions(mmproj=mmproj, n_ctx=2048))
    try:
        messages = [{"role": "user", "content": [{"type": "image", "url": str(image)},
                                                 {"type": "text", "text": "What is in this picture?"}]}]
        with engine.conversation() as conv:
            done = [e for e in conv.generate(messages, thinking=False, sampling=Sampling(temperature=0, max_tokens=32))
                    if isinstance(e, Finished)][0]
    finally:
        engine.close()
    s = done.stats
    out.print(f"image chat turn: prompt {s.prompt_tokens} tokens (256 of them the image) in {s.prompt_seconds:.2f} s, "
              f"{s.generated_tokens} tokens generated at {s.tokens_per_second:.1f} tok/s",
              highlight=False, soft_wrap=True)


def _resolve_model(model: str, mmproj: Path | None) -> tuple[Path, Path | None]:
    """MODEL is a GGUF file (first shard of a split one), a directory holding one model GGUF and its mmproj, or a
    Hugging Face repo id (``owner/name[:QUANT]``) fetched into the Hugging Face cache."""
    from .runtime.backend import find_mmproj
    from .runtime.hub import looks_like_repo_id, resolve_repo

    path = Path(model).expanduser()
    if not path.exists() and looks_like_repo_id(model):
        found, proj = resolve_repo(model)
        return found, mmproj or proj
    if path.is_dir():
        found = sorted(p for p in path.glob("*.gguf") if not p.name.startswith("mmproj-")
                       and not ("-of-" in p.name and "-00001-of-" not in p.name))
        if len(found) != 1:
            raise UsageError(f"expected one model GGUF in the directory, found {len(found)}; pass the file", path)
        path = found[0]
    if not path.is_file():
        raise GGUFFileError("no such file (nor a Hugging Face repo id like owner/name:Q4_K_M)", path)
    return path, mmproj or find_mmproj(path)


# Options shared by the commands that load a model: declared once, listed in each signature (Typer reads them there).
ModelArg = Annotated[str, typer.Argument(help="A model GGUF, a directory holding it and its mmproj, or a Hugging Face "
                                              "repo id (owner/name[:QUANT]).")]
MmprojOpt = Annotated[Path | None, typer.Option(help="Vision projector (default: mmproj-*.gguf beside the model).")]
ImageOpt = Annotated[list[str] | None, typer.Option(help="Image path, URL or data URI; repeatable.")]
ThinkOpt = Annotated[bool, typer.Option("--think/--no-think", help="Intern-S1's thinking mode (on by default).")]
TemperatureOpt = Annotated[float | None, typer.Option(help="Default: the model's (from the GGUF).", min=0)]
TopKOpt = Annotated[int | None, typer.Option(min=0)]
TopPOpt = Annotated[float | None, typer.Option(min=0, max=1)]
MinPOpt = Annotated[float | None, typer.Option(min=0, max=1)]
SeedOpt = Annotated[int | None, typer.Option()]
MaxTokensOpt = Annotated[int, typer.Option(min=1)]
CtxOpt = Annotated[int | None, typer.Option(help="Context length (default: min(model's, 8192)).")]
ThreadsOpt = Annotated[int | None, typer.Option(min=1)]
GpuLayersOpt = Annotated[str, typer.Option(help="Layers to offload: auto (what fits in free GPU memory), all, or N.")]
CpuMoeOpt = Annotated[bool, typer.Option("--cpu-moe", help="Keep MoE expert weights in host memory.")]
FlashAttnOpt = Annotated[str, typer.Option(help="Flash attention: auto, on or off.")]
CacheTypeOpt = Annotated[str, typer.Option(help="KV cache type: f16, f32, q8_0 or q4_0 (quantised V needs flash "
                                                "attention).")]
DynTokOpt = Annotated[bool, typer.Option("--dynamic-tokenizer/--no-dynamic-tokenizer",
                                         help="Intern-S1's SMILES/IUPAC/protein tokenizers (when the GGUF has them).")]


def _gpu_layers(value: str) -> int | None:
    if value == "auto":
        return None
    if value == "all":
        return -1
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--gpu-layers takes auto, all or a number, not {value!r}") from None


def _load_engine(model: str, mmproj: Path | None, with_projector: bool, **load: Any) -> Any:
    """Resolve MODEL, load it (the projector only when images may come: it costs memory and start-up time)."""
    from .runtime.backend import LoadOptions
    from .runtime.engine import Engine

    path, proj = _resolve_model(model, mmproj)
    load["gpu_layers"] = _gpu_layers(load["gpu_layers"])
    engine = Engine(path, LoadOptions(mmproj=proj if with_projector else None, **load))
    if load["gpu_layers"] is None and engine.backend.offload.devices:
        err.print(engine.backend.offload.describe(), style="dim", highlight=False)
    return engine


@app.command()
@handle_errors
def run(
    model: ModelArg,
    prompt: Annotated[str | None, typer.Argument(help="The prompt (read from stdin when omitted).")] = None,
    image: ImageOpt = None, mmproj: MmprojOpt = None, think: ThinkOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print reasoning, answer, tool calls and stats as JSON.")] = False,
    temperature: TemperatureOpt = None, top_k: TopKOpt = None, top_p: TopPOpt = None, min_p: MinPOpt = None,
    seed: SeedOpt = None, max_tokens: MaxTokensOpt = 1024,
    ctx_size: CtxOpt = None, threads: ThreadsOpt = None, gpu_layers: GpuLayersOpt = "auto", cpu_moe: CpuMoeOpt = False,
    flash_attn: FlashAttnOpt = "auto", cache_type_k: CacheTypeOpt = "f16", cache_type_v: CacheTypeOpt = "f16",
    dynamic_tokenizer: DynTokOpt = True,
) -> None:
    """One question, one answer: the answer on stdout (pipe-friendly), or everything with --json."""
    from .runtime.engine import Finished, Sampling
    from .runtime.parsers import ReasoningDelta, TextDelta, ToolCall

    text = prompt if prompt is not None else sys.stdin.read()
    if not text.strip():
        raise UsageError("empty prompt: pass it as an argument or on stdin")
    content: list[dict[str, Any]] = [{"type": "image", "url": i} for i in image or []]
    messages = [{"role": "user", "content": content + [{"type": "text", "text": text}] if content else text}]
    engine = _load_engine(model, mmproj, bool(image), n_ctx=ctx_size, n_threads=threads, gpu_layers=gpu_layers,
                          cpu_moe=cpu_moe, flash_attn=flash_attn, type_k=cache_type_k, type_v=cache_type_v,
                          dynamic_tokenizer=dynamic_tokenizer)
    sampling = Sampling(temperature, top_k, top_p, min_p, seed, max_tokens)
    reasoning, answer, calls, stats = [], [], [], None
    try:
        for event in engine.conversation().generate(messages, thinking=think, sampling=sampling):
            if isinstance(event, TextDelta):
                answer.append(event.text)
                if not as_json:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
            elif isinstance(event, ReasoningDelta):
                reasoning.append(event.text)
            elif isinstance(event, ToolCall):
                calls.append({"name": event.name, "arguments": event.arguments})
            elif isinstance(event, Finished):
                stats = event.stats
    finally:
        engine.close()
    if as_json:
        from dataclasses import asdict

        sys.stdout.write(json.dumps({"reasoning": "".join(reasoning), "answer": "".join(answer), "tool_calls": calls,
                                     "stats": asdict(stats) | {"tokens_per_second": stats.tokens_per_second}},
                                    ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write("\n")


@app.command()
@handle_errors
def chat(
    model: ModelArg, image: ImageOpt = None, mmproj: MmprojOpt = None, think: ThinkOpt = True,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    no_vision: Annotated[bool, typer.Option("--no-vision", help="Do not load the projector (saves memory).")] = False,
    temperature: TemperatureOpt = None, top_k: TopKOpt = None, top_p: TopPOpt = None, min_p: MinPOpt = None,
    seed: SeedOpt = None, max_tokens: MaxTokensOpt = 4096,
    ctx_size: CtxOpt = None, threads: ThreadsOpt = None, gpu_layers: GpuLayersOpt = "auto", cpu_moe: CpuMoeOpt = False,
    flash_attn: FlashAttnOpt = "auto", cache_type_k: CacheTypeOpt = "f16", cache_type_v: CacheTypeOpt = "f16",
    dynamic_tokenizer: DynTokOpt = True,
) -> None:
    """Chat in the terminal: /image, /think on|off, /system, /reset, /undo, /save, /load, /stats (see /help)."""
    from .chat import start
    from .runtime.engine import Sampling

    engine = _load_engine(model, mmproj, not no_vision, n_ctx=ctx_size, n_threads=threads, gpu_layers=gpu_layers,
                          cpu_moe=cpu_moe, flash_attn=flash_attn, type_k=cache_type_k, type_v=cache_type_v,
                          dynamic_tokenizer=dynamic_tokenizer)
    try:
        vision = "with vision" if engine.backend.mtmd else "text only (no mmproj)"
        out.print(f"[bold]{engine.backend.path.name}[/] · {vision} · context {engine.backend.n_ctx} · "
                  f"thinking {'on' if think else 'off'}", highlight=False)
        start(engine, system, think, Sampling(temperature, top_k, top_p, min_p, seed, max_tokens), image or [], out)
    finally:
        engine.close()


@app.command()
@handle_errors
def serve(
    model: ModelArg, mmproj: MmprojOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to your network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 11435,
    parallel: Annotated[int, typer.Option(min=1, max=64, help="Requests decoded together in one batch.")] = 4,
    queue: Annotated[int, typer.Option(min=0, help="Requests that may wait; beyond that: 429.")] = 64,
    api_key: Annotated[str | None, typer.Option(envvar="INTERNS1_API_KEY", help="Require Authorization: Bearer KEY "
                                                "(every route but /health).")] = None,
    allow_remote_images: Annotated[bool, typer.Option(help="Fetch http(s) image URLs (public addresses only).")] = False,
    allow_private_images: Annotated[bool, typer.Option(help="With remote images: also loopback/private addresses.")] = False,
    allow_file_root: Annotated[Path | None, typer.Option(help="Read local image paths, only under this folder.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(help="Allowed CORS origin; repeatable.")] = None,
    model_name: Annotated[str, typer.Option(help="The model id clients ask for.")] = "intern-s1",
    timeout: Annotated[float, typer.Option(min=1, help="Per-request limit in seconds.")] = 600.0,
    max_body: Annotated[str, typer.Option(help="Largest request body (e.g. 50M).")] = "50M",
    ctx_size: CtxOpt = None, threads: ThreadsOpt = None, gpu_layers: GpuLayersOpt = "auto", cpu_moe: CpuMoeOpt = False,
    flash_attn: FlashAttnOpt = "auto", cache_type_k: CacheTypeOpt = "f16", cache_type_v: CacheTypeOpt = "f16",
    dynamic_tokenizer: DynTokOpt = True,
) -> None:
    """An OpenAI- and Ollama-compatible server: /v1/chat/completions, /v1/completions, /v1/models, /api/chat, ..."""
    import uvicorn

    from .server.app import ServeOptions, create_app

    engine = _load_engine(model, mmproj, True, n_ctx=ctx_size, n_threads=threads, gpu_layers=gpu_layers,
                          cpu_moe=cpu_moe, flash_attn=flash_attn, type_k=cache_type_k, type_v=cache_type_v,
                          n_seq_max=parallel, dynamic_tokenizer=dynamic_tokenizer)
    options = ServeOptions(host=host, port=port, parallel=parallel, max_queue=queue, api_key=api_key,
                           allow_remote_images=allow_remote_images, allow_private_addresses=allow_private_images,
                           allow_file_root=allow_file_root, cors_origins=tuple(cors_origin or ()),
                           max_body_bytes=parse_size(max_body), request_timeout_s=timeout, model_name=model_name)
    engine.limits = options.image_limits()
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err.print(f"warning: listening on {host} without --api-key: anyone who can reach this port can use it",
                  style="yellow")
    out.print(f"serving {engine.backend.path.name} as {model_name!r} on http://{host}:{port} "
              f"({parallel} parallel, context {engine.backend.n_ctx})", highlight=False)
    try:
        uvicorn.run(create_app(engine, options), host=host, port=port, log_level="warning")
    finally:
        engine.close()


@app.command()
@handle_errors
def tokenize(
    model: ModelArg,
    text: Annotated[str | None, typer.Argument(help="The text (read from stdin when omitted).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Segments and ids as JSON.")] = False,
    dynamic_tokenizer: DynTokOpt = True,
) -> None:
    """How the model cuts TEXT: BPE, special tokens and SMILES/IUPAC/protein spans (one colour each), and the ids."""
    from rich.text import Text

    from .runtime.tokenize import tokenize_text

    path, _ = _resolve_model(model, None)
    segments = tokenize_text(path, text if text is not None else sys.stdin.read(), dynamic_tokenizer)
    if as_json:
        sys.stdout.write(json.dumps([{"text": s.text, "domain": s.domain, "ids": list(s.ids)} for s in segments],
                                    ensure_ascii=False) + "\n")
        return
    colours = {None: "white", "special": "bold magenta", "SMILES": "green", "IUPAC": "cyan", "FASTA": "yellow"}
    line = Text()
    for s in segments:
        line.append(s.text, style=colours.get(s.domain, "blue"))
    out.print(line)
    ids = [i for s in segments for i in s.ids]
    out.print(f"{len(ids)} tokens: {ids}", highlight=False, soft_wrap=True)
    legend = "  ".join(f"[{c}]{d or 'BPE'}[/]" for d, c in colours.items())
    out.print(legend)


def main() -> None:
    app()
