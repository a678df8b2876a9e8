"""The ``interns1`` commands that load a model: ``run``, ``chat``, ``serve``, ``tokenize``, and the options they share
(declared once here, listed in each signature because Typer reads them there)."""

from __future__ import annotations

import json
import os
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli import app, err, handle_errors, out
from .errors import GGUFFileError, UsageError
from .fsutil import parse_size


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


ModelArg = Annotated[str, typer.Argument(help="A model GGUF, a directory holding it and its mmproj, or a Hugging Face "
                                              "repo id (owner/name[:QUANT]).")]
MmprojOpt = Annotated[Path | None, typer.Option(help="Vision projector (default: mmproj-*.gguf beside the model).")]
ImageOpt = Annotated[list[str] | None, typer.Option(help="Image path, URL or data URI; repeatable.")]
VideoOpt = Annotated[list[str] | None, typer.Option(help="Video path, URL or data URI (MP4, WebM, MKV, AVI, ...; "
                                                    "frames sampled evenly, each one 448-pixel tile); repeatable.")]
FramesOpt = Annotated[int | None, typer.Option(min=1, help="Frames sampled per video (default 8, at most 64).")]
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
CpuBuffersOpt = Annotated[str | None, typer.Option(
    help="Where the CPU keeps weights: auto, extra (llama.cpp's choice), repack or plain; default "
         "$INTERNS1_CPU_BUFFERS, else auto, which avoids llama.cpp's AMX path (it crashes on prompts).")]
RpcOpt = Annotated[str | None, typer.Option(
    help="RPC workers HOST:PORT[,HOST:PORT...] (`interns1 rpc-worker` on each) that take offloaded layers.")]
TensorSplitOpt = Annotated[str | None, typer.Option(
    help="Share of the offloaded layers per device, e.g. 1,1 or 3,1 (RPC workers first, then GPUs).")]
MaxTilesOpt = Annotated[int | None, typer.Option(min=1, help="At most this many 448-pixel tiles per image (default: "
                                                "the model's, 12); 1: one tile, no thumbnail.")]
DynTokOpt = Annotated[bool, typer.Option("--dynamic-tokenizer/--no-dynamic-tokenizer",
                                         help="Intern-S1's SMILES/IUPAC/protein tokenizers (when the GGUF has them).")]


def _split(value: str | None) -> tuple[float, ...]:
    if not value:
        return ()
    try:
        return tuple(float(x) for x in value.split(","))
    except ValueError:
        raise UsageError(f"--tensor-split takes numbers separated by commas, not {value!r}") from None


def on_rpc_abort(message: str) -> None:
    """ggml is about to abort the process (an RPC worker lost mid-generation, most often): say so and leave."""
    sys.stdout.flush()
    err.print(f"error: llama.cpp stopped: {message.strip()}. An RPC worker stopped answering or crashed; the model "
              "cannot continue without the layers it held: check the workers and start again.", highlight=False)
    os._exit(1)


def _serve_without_engine(scheduler: Any, message: str) -> None:
    """``serve``'s answer, once it serves, to ggml aborting (an RPC worker lost; ggml-rpc aborts on its own
    dispatch thread while the scheduler thread waits in llama_decode): the requests end with an error and the server
    goes on answering 503 (``/health`` too) until restarted. The aborting thread never returns into ggml (which would
    abort the process), so the scheduler thread stays parked in llama_decode; nothing else calls llama.cpp."""
    err.print(f"error: llama.cpp stopped: {message.strip()}. An RPC worker stopped answering or crashed: every "
              "request now gets 503 until the server is restarted.", highlight=False)
    scheduler.lose("an RPC worker stopped answering or crashed")
    threading.Event().wait()


def _gpu_layers(value: str) -> int | None:
    if value == "auto":
        return None
    if value == "all":
        return -1
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--gpu-layers takes auto, all or a number, not {value!r}") from None


def _load_engine(model: str, mmproj: Path | None, with_projector: bool, max_tiles: int | None = None,
                 frames: int | None = None, **load: Any) -> Any:
    """Resolve MODEL, load it (the projector only when images may come: it costs memory and start-up time)."""
    from .runtime.backend import LoadOptions
    from .runtime.engine import Engine
    from .runtime.video import VideoLimits
    from .runtime.vision import VisionOptions

    from .runtime import rpc
    from .runtime.devices import describe_layers

    path, proj = _resolve_model(model, mmproj)
    load["gpu_layers"] = _gpu_layers(load["gpu_layers"])
    load["rpc"] = tuple(rpc.parse_endpoints(load["rpc"])) if load.get("rpc") else ()
    load["tensor_split"] = _split(load.get("tensor_split"))
    if load["rpc"]:
        rpc.on_abort(on_rpc_abort)
    engine = Engine(path, LoadOptions(mmproj=proj if with_projector else None, **load),
                    vision=VisionOptions(max_tiles=max_tiles), video=VideoLimits().with_frames(frames))
    if load["rpc"]:
        names = [f"RPC{i} = {w.endpoint}" for i, w in enumerate(engine.backend.workers)]
        err.print(f"RPC workers: {', '.join(names)}; {describe_layers(engine.backend.layers)}", style="dim",
                  highlight=False)
    if load["gpu_layers"] is None and engine.backend.offload.devices:
        err.print(engine.backend.offload.describe(), style="dim", highlight=False)
    if os.environ.get("INTERNS1_VERBOSE"):
        err.print(engine.backend.placement.describe(), style="dim", highlight=False)
    return engine


@app.command()
@handle_errors
def run(
    model: ModelArg,
    prompt: Annotated[str | None, typer.Argument(help="The prompt (read from stdin when omitted).")] = None,
    image: ImageOpt = None, video: VideoOpt = None, frames: FramesOpt = None, mmproj: MmprojOpt = None,
    think: ThinkOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print reasoning, answer, tool calls and stats as JSON.")] = False,
    temperature: TemperatureOpt = None, top_k: TopKOpt = None, top_p: TopPOpt = None, min_p: MinPOpt = None,
    seed: SeedOpt = None, max_tokens: MaxTokensOpt = 1024,
    ctx_size: CtxOpt = None, threads: ThreadsOpt = None, gpu_layers: GpuLayersOpt = "auto", cpu_moe: CpuMoeOpt = False,
    cpu_buffers: CpuBuffersOpt = None, rpc: RpcOpt = None, tensor_split: TensorSplitOpt = None,
    flash_attn: FlashAttnOpt = "auto", cache_type_k: CacheTypeOpt = "f16", cache_type_v: CacheTypeOpt = "f16",
    dynamic_tokenizer: DynTokOpt = True, max_tiles: MaxTilesOpt = None,
) -> None:
    """One question, one answer: the answer on stdout (pipe-friendly), or everything with --json."""
    from .runtime.engine import Finished, Sampling
    from .runtime.parsers import ReasoningDelta, TextDelta, ToolCall

    text = prompt if prompt is not None else sys.stdin.read()
    if not text.strip():
        raise UsageError("empty prompt: pass it as an argument or on stdin")
    content: list[dict[str, Any]] = ([{"type": "image", "url": i} for i in image or []]
                                     + [{"type": "video", "url": v} for v in video or []])
    messages = [{"role": "user", "content": content + [{"type": "text", "text": text}] if content else text}]
    engine = _load_engine(model, mmproj, bool(content), frames=frames, n_ctx=ctx_size, n_threads=threads,
                          gpu_layers=gpu_layers, cpu_moe=cpu_moe, cpu_buffers=cpu_buffers, rpc=rpc,
                          tensor_split=tensor_split, flash_attn=flash_attn, type_k=cache_type_k, type_v=cache_type_v,
                          dynamic_tokenizer=dynamic_tokenizer, max_tiles=max_tiles)
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
    model: ModelArg, image: ImageOpt = None, video: VideoOpt = None, frames: FramesOpt = None,
    mmproj: MmprojOpt = None, think: ThinkOpt = True,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    no_vision: Annotated[bool, typer.Option("--no-vision", help="Do not load the projector (saves memory).")] = False,
    temperature: TemperatureOpt = None, top_k: TopKOpt = None, top_p: TopPOpt = None, min_p: MinPOpt = None,
    seed: SeedOpt = None, max_tokens: MaxTokensOpt = 4096,
    ctx_size: CtxOpt = None, threads: ThreadsOpt = None, gpu_layers: GpuLayersOpt = "auto", cpu_moe: CpuMoeOpt = False,
    cpu_buffers: CpuBuffersOpt = None, rpc: RpcOpt = None, tensor_split: TensorSplitOpt = None,
    flash_attn: FlashAttnOpt = "auto", cache_type_k: CacheTypeOpt = "f16", cache_type_v: CacheTypeOpt = "f16",
    dynamic_tokenizer: DynTokOpt = True, max_tiles: MaxTilesOpt = None,
) -> None:
    """Chat in the terminal: /image, /video, /think on|off, /system, /reset, /undo, /save, /load, /stats (/help)."""
    from .chat import start
    from .runtime.engine import Sampling

    engine = _load_engine(model, mmproj, not no_vision, frames=frames, n_ctx=ctx_size, n_threads=threads,
                          gpu_layers=gpu_layers, cpu_moe=cpu_moe, cpu_buffers=cpu_buffers, rpc=rpc,
                          tensor_split=tensor_split, flash_attn=flash_attn, type_k=cache_type_k, type_v=cache_type_v,
                          dynamic_tokenizer=dynamic_tokenizer, max_tiles=max_tiles)
    try:
        vision = "with vision" if engine.backend.mtmd else "text only (no mmproj)"
        out.print(f"[bold]{engine.backend.path.name}[/] · {vision} · context {engine.backend.n_ctx} · "
                  f"thinking {'on' if think else 'off'}", highlight=False)
        start(engine, system, think, Sampling(temperature, top_k, top_p, min_p, seed, max_tokens),
              [f"/image {i}" for i in image or []] + [f"/video {v}" for v in video or []], out)
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
    allow_remote_images: Annotated[bool, typer.Option(help="Fetch http(s) image and video URLs (public addresses "
                                                      "only).")] = False,
    allow_private_images: Annotated[bool, typer.Option(help="With remote images: also loopback/private addresses.")] = False,
    allow_file_root: Annotated[Path | None, typer.Option(help="Read local image and video paths, only under this "
                                                         "folder.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(help="Allowed CORS origin; repeatable.")] = None,
    model_name: Annotated[str, typer.Option(help="The model id clients ask for.")] = "intern-s1",
    timeout: Annotated[float, typer.Option(min=1, help="Per-request limit in seconds.")] = 600.0,
    max_body: Annotated[str, typer.Option(help="Largest request body (e.g. 50M).")] = "50M",
    webui: Annotated[bool, typer.Option("--webui/--no-webui", help="The chat page at / (off: 404).")] = True,
    ctx_size: CtxOpt = None, threads: ThreadsOpt = None, gpu_layers: GpuLayersOpt = "auto", cpu_moe: CpuMoeOpt = False,
    cpu_buffers: CpuBuffersOpt = None, rpc: RpcOpt = None, tensor_split: TensorSplitOpt = None,
    flash_attn: FlashAttnOpt = "auto", cache_type_k: CacheTypeOpt = "f16", cache_type_v: CacheTypeOpt = "f16",
    dynamic_tokenizer: DynTokOpt = True, max_tiles: MaxTilesOpt = None, frames: FramesOpt = None,
) -> None:
    """An OpenAI- and Ollama-compatible server: /v1/chat/completions, /v1/completions, /v1/models, /api/chat, ..."""
    import uvicorn

    from .runtime import rpc as rpc_backend  # ``rpc`` is the option
    from .server.app import ServeOptions, create_app

    app_ = None

    try:  # every option is checked before the model loads (seconds to minutes)
        max_body_bytes = parse_size(max_body)
    except ValueError as exc:
        raise UsageError(f"--max-body: {exc}") from None
    options = ServeOptions(host=host, port=port, parallel=parallel, max_queue=queue, api_key=api_key,
                           allow_remote_images=allow_remote_images, allow_private_addresses=allow_private_images,
                           allow_file_root=allow_file_root, cors_origins=tuple(cors_origin or ()),
                           max_body_bytes=max_body_bytes, request_timeout_s=timeout, model_name=model_name,
                           webui=webui)
    engine = _load_engine(model, mmproj, True, n_ctx=ctx_size, n_threads=threads, gpu_layers=gpu_layers,
                          cpu_moe=cpu_moe, cpu_buffers=cpu_buffers, rpc=rpc, tensor_split=tensor_split,
                          flash_attn=flash_attn, type_k=cache_type_k, type_v=cache_type_v,
                          n_seq_max=parallel, dynamic_tokenizer=dynamic_tokenizer, max_tiles=max_tiles,
                          frames=frames)
    engine.limits = options.image_limits()
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err.print(f"warning: listening on {host} without --api-key: anyone who can reach this port can use it",
                  style="yellow")
    out.print(f"serving {engine.backend.path.name} as {model_name!r} on http://{host}:{port} "
              f"({parallel} parallel, context {engine.backend.n_ctx})"
              + (f"; chat page at http://{host}:{port}/" if webui else ""), highlight=False)
    try:
        app_ = create_app(engine, options)
        if engine.backend.workers:
            rpc_backend.on_abort(partial(_serve_without_engine, app_.state.interns1.scheduler))
        uvicorn.run(app_, host=host, port=port, log_level="warning")
    finally:
        if app_ is not None and app_.state.interns1.scheduler.lost:
            os._exit(1)  # the scheduler thread is parked inside llama.cpp: nothing of it may be freed
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
