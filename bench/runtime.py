"""Runtime benchmark (issue 4): our engine against llama-cpp-python on the same GGUF, same settings, in one run.

1. Decode tok/s, thinking off, greedy: ``Conversation.generate`` vs a minimal loop on llama-cpp-python's low-level
   bindings (decode the prompt, then sample + decode one token, nothing else) vs ``Llama.create_chat_completion(...,
   stream=True)``, three contexts of one process advanced in lockstep (one streamed item each in turn, each step
   timed), so that other load on the machine hits all three alike. Rate = (n - 1) / (the time of a stream's own steps
   from its first token to its last): prompt processing excluded. Ratios are medians of per-round ratios.
   Goal: engine/minimal >= 0.97.
2. Time to first token at turn 5 (a ~740-token system prompt, four ~400-token user turns with 16-token replies, a
   short fifth question): one Conversation across the 5 turns (KV cache reused) vs the same conversation reset before
   turn 5 (all of it evaluated). Goal: >= 5x.
3. Time to first token of an image or video turn, for a 448x448 image (1 tile), a 640x480 one (InternVL's 4x3 grid
   and a thumbnail: 13 tiles) and 8 frames of two 640x480 H.264 clips at 30 fps (64 frames, and 1800: a minute;
   every frame up to the last one sampled is decoded): every tile encoded and every video decoded, one mtmd call per
   tile vs mtmd batches, and with the tiles' embeddings and the decoded video in the engine's caches, as a later turn
   about the same picture or video finds them (the projector and the decoding skipped; the positions still
   evaluated).

Each measurement is repeated (``--repeats``, after an untimed warm-up) and the median printed, with the best run
(the least disturbed by other processes on a shared machine) where noise matters.

    python bench/runtime.py                       # Intern-S1-mini 'bench' layout (~1 GB BF16) -> Q8_0
    python bench/runtime.py --size tiny --tokens 32
    python bench/runtime.py --size tiny --sections 3   # the image turns only

The synthetic checkpoint and its GGUFs are cached under ~/.cache/interns1-local/bench-runtime/.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter, chat_formatter_to_chat_completion_handler
from PIL import Image

from interns1_local.converters.convert import ConvertOptions, convert
from interns1_local.gguf_header import read_header, split_tensors
from interns1_local.runtime import placement
from interns1_local.runtime.backend import LoadOptions, find_mmproj
from interns1_local.runtime.engine import Conversation, Engine, Finished, Sampling
from interns1_local.runtime.vision import VisionOptions
from interns1_local.synth import write_checkpoint, write_clip

CACHE = Path.home() / ".cache" / "interns1-local" / "bench-runtime"
N_BATCH = 512
DECODE_PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper who finds a message "
                                             "in a bottle, with many details about the sea and the weather."}]
SENTENCES = ("The harbour lights came on one by one as the fog rolled in from the grey northern sea.",
             "Every ledger entry records the wind speed, the visibility and the ships that passed the point.",
             "A careful engineer checks the lamp mechanism twice a day and oils the clockwork gears by hand.",
             "Supplies arrive by boat on Thursdays, weather permitting, and are carried up ninety-nine steps.",
             "In winter the storms can last for a week, and the keeper writes letters that nobody will read.")


@dataclass(frozen=True)
class Setup:
    model: Path
    mmproj: Path
    n_ctx: int
    threads: int
    tokens: int
    repeats: int


def model_files(size: str, out_type: str) -> tuple[Path, Path]:
    """The cached GGUF pair for this size and type, built on first use (both writers are atomic)."""
    ckpt = CACHE / f"Intern-S1-mini-{size}"
    if not (ckpt / "model.safetensors.index.json").is_file():
        write_checkpoint(ckpt, model="mini", size=size)
    out = CACHE / f"Intern-S1-mini-{size}-{out_type}-f16"
    if not any(out.glob("mmproj-*.gguf")):
        done = convert(ckpt, out, ConvertOptions(out_type, "f16"))
        return done.model.paths[0], done.mmproj.paths[0]
    model = next(p for p in sorted(out.glob("*.gguf")) if not p.name.startswith("mmproj-"))
    mmproj = find_mmproj(model)
    assert mmproj is not None
    return model, mmproj


def spread_tokens(n: int) -> list[int]:
    """``n`` token ids spread over the vocabulary (no repeats that a cache or a kernel could exploit)."""
    return [1000 + (i * 7919) % 100000 for i in range(n)]


def time_prompt(backend: Any, tokens: list[int], repeats: int) -> list[float]:
    """Seconds to evaluate ``tokens`` as one prompt on an emptied sequence 0, ``repeats`` times."""
    times = []
    for _ in range(repeats):
        backend.truncate(0, 0)
        start = time.perf_counter()
        backend.decode(tokens, 0, 0, want_logits=True)
        times.append(time.perf_counter() - start)
    return times


def time_steps(backend: Any, tokens: list[int], start_pos: int, steps: int) -> list[float]:
    """Seconds of each of ``steps`` one-token decodes on sequence 0 from ``start_pos`` (tokens taken in turn)."""
    times = []
    for i in range(steps):
        start = time.perf_counter()
        backend.decode([tokens[i % len(tokens)]], 0, start_pos + i, want_logits=True)
        times.append(time.perf_counter() - start)
    return times


def text(label: str, n_sentences: int) -> str:
    return " ".join(f"({label}.{i}) {SENTENCES[i % len(SENTENCES)]}" for i in range(n_sentences))


# -- 1. decode --------------------------------------------------------------------------------------------------
Steps = Generator[None, None, int]  # one step per item the caller receives; returns the number of tokens generated


def engine_steps(conv: Conversation, n: int) -> Steps:
    conv.reset()
    done = None
    for done in conv.generate(DECODE_PROMPT, thinking=False, sampling=Sampling(temperature=0, max_tokens=n)):
        yield  # an event as each token is sampled (the one before it decoded), Finished at the end
    assert isinstance(done, Finished)
    return done.stats.generated_tokens


def same_placement(model: Path) -> llama_cpp.llama_model_params:
    """Default model parameters with the CPU buffer placement our engine uses (runtime/placement.py): on AMX builds
    llama.cpp's own placement crashes on the first prompt, and elsewhere this is llama.cpp's own choice."""
    params = llama_cpp.llama_model_default_params()
    header = read_header(model, max_array=0)
    chosen = placement.plan(header, split_tensors(model, header))
    params.use_extra_bufts = chosen.use_extra_bufts
    overrides = placement.BuftOverrides(chosen, [])
    if overrides.address:
        _KEEP.append(overrides)  # llama.cpp reads the patterns during the load
        params.tensor_buft_overrides = overrides.address
    return params


_KEEP: list[placement.BuftOverrides] = []


class Minimal:
    """The least a Python program can do with llama.cpp: same context settings as Backend, greedy, no extras."""

    def __init__(self, setup: Setup) -> None:
        self.model = llama_cpp.llama_model_load_from_file(str(setup.model).encode(), same_placement(setup.model))
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = setup.n_ctx, N_BATCH, N_BATCH
        cparams.n_threads = cparams.n_threads_batch = setup.threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.sampler = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(self.sampler, llama_cpp.llama_sampler_init_greedy())

    def steps(self, prompt: str, n: int) -> Steps:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        data = prompt.encode()
        ids = (llama_cpp.llama_token * N_BATCH)()  # referenced here: the batch only points at it
        n_prompt = llama_cpp.llama_tokenize(self.vocab, data, len(data), ids, N_BATCH, False, True)
        assert 0 < n_prompt <= N_BATCH
        llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(ids, n_prompt))
        one = (llama_cpp.llama_token * 1)()
        token = llama_cpp.llama_sampler_sample(self.sampler, self.ctx, -1)
        for i in range(1, n + 1):
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                return i - 1
            yield  # token i is out
            if i < n:
                one[0] = token
                llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(one, 1))
                token = llama_cpp.llama_sampler_sample(self.sampler, self.ctx, -1)
        return n

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.sampler)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


def high_level(setup: Setup) -> tuple[llama_cpp.Llama, Callable[..., Any]]:
    """llama_cpp.Llama with Backend's context settings (auto flash attention is on for CPU) and the GGUF's chat
    template rendered with enable_thinking=False, as our engine does with thinking off; and that formatter."""
    bindings = llama_cpp.llama_cpp  # Llama has no placement option: it takes its model parameters from here
    default, bindings.llama_model_default_params = bindings.llama_model_default_params, \
        lambda: same_placement(setup.model)
    try:
        llm = llama_cpp.Llama(str(setup.model), n_ctx=setup.n_ctx, n_batch=N_BATCH, n_ubatch=N_BATCH,
                              n_threads=setup.threads, n_threads_batch=setup.threads, flash_attn=True, verbose=False)
    finally:
        bindings.llama_model_default_params = default
    special = partial(llm.detokenize, special=True)
    formatter = partial(Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"],
                                            special([llm.token_eos()]).decode(), special([llm.token_bos()]).decode()),
                        enable_thinking=False)
    llm.chat_handler = chat_formatter_to_chat_completion_handler(formatter)
    return llm, formatter


def chat_completion_steps(llm: llama_cpp.Llama, n: int) -> Steps:
    chunks, finish = 0, None
    for chunk in llm.create_chat_completion(DECODE_PROMPT, max_tokens=n, temperature=0, stream=True):
        chunks += 1
        finish = chunk["choices"][0]["finish_reason"] or finish
        yield  # the first chunk (the role) comes after the first token's sampling, the last after the last's
    return n if finish == "length" else chunks - 2


def lockstep(streams: dict[str, Steps]) -> dict[str, tuple[int, float]]:
    """Advance the streams one step each in turn, so that whatever else runs on the machine slows all of them alike.
    Each stream's first step (its prompt and first token) is not counted: returns, per stream, the tokens generated
    and the seconds its own steps took from its first token to its last."""
    spent, done, started = dict.fromkeys(streams, 0.0), dict[str, int](), set[str]()
    while len(done) < len(streams):
        for name in (name for name in streams if name not in done):
            t = time.perf_counter()
            try:
                next(streams[name])
            except StopIteration as stop:
                done[name] = stop.value
            if name in started:
                spent[name] += time.perf_counter() - t
            started.add(name)
    return {name: (done[name], spent[name]) for name in streams}


def bench_decode(setup: Setup) -> dict[str, Any]:
    engine = Engine(setup.model, LoadOptions(n_ctx=setup.n_ctx, n_batch=N_BATCH, n_threads=setup.threads))
    conv, minimal, (llm, formatter) = engine.conversation(), Minimal(setup), high_level(setup)
    prompt = engine.template.render(DECODE_PROMPT, add_generation_prompt=True, enable_thinking=False)
    same_prompt, n_prompt = formatter(messages=DECODE_PROMPT).prompt == prompt, len(engine.backend.tokenize(prompt))
    makers: dict[str, Callable[[], Steps]] = {"engine": lambda: engine_steps(conv, setup.tokens),
                                              "minimal": lambda: minimal.steps(prompt, setup.tokens),
                                              "chat_completion": lambda: chat_completion_steps(llm, setup.tokens)}
    names = list(makers)
    rates: dict[str, list[float]] = {name: [] for name in names}
    counts: set[int] = set()
    try:
        lockstep({name: make() for name, make in makers.items()})  # warm-up: each mapping faults its weights in
        for r in range(setup.repeats):
            order = names[r % 3:] + names[: r % 3]  # which goes first in each step changes round by round
            for name, (n, seconds) in lockstep({name: makers[name]() for name in order}).items():
                rates[name].append((n - 1) / seconds)
                counts.add(n)
            print(f"  decode round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()) + " tok/s",
                  flush=True)
    finally:
        llm.close()
        minimal.close()
        engine.close()
    med, best = {k: median(v) for k, v in rates.items()}, {k: max(v) for k, v in rates.items()}

    def ratio(a: str, b: str) -> str:  # paired by round: the streams of one round ran under the same conditions
        per_round = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        return f"{median(per_round):.3f} (rounds: {', '.join(f'{r:.3f}' for r in per_round)})"

    return {"prompt tokens": n_prompt, "same rendered prompt": same_prompt,
            "generated tokens": f"{sorted(counts)} of {setup.tokens} asked",  # fewer: a run met an end-of-turn token
            **{f"{name} tok/s": f"{med[name]:.2f} (best {best[name]:.2f})" for name in names},
            "engine/minimal": ratio("engine", "minimal"), "engine/chat_completion": ratio("engine", "chat_completion")}


# -- 2. time to first token at turn 5 --------------------------------------------------------------------------
def first_token(conv: Conversation, messages: list[dict[str, Any]]) -> tuple[float, Finished]:
    """Seconds from the call to the first item the stream yields (render, tokenise, prefill, first sample)."""
    t = time.perf_counter()
    stream = conv.generate(messages, thinking=False, sampling=Sampling(temperature=0, max_tokens=1))
    first = next(stream)
    seconds = time.perf_counter() - t
    done = ([first, *stream])[-1]
    assert isinstance(done, Finished)
    return seconds, done


def bench_turn5(setup: Setup) -> dict[str, Any]:
    engine = Engine(setup.model, LoadOptions(n_ctx=setup.n_ctx, n_batch=N_BATCH, n_threads=setup.threads))
    conv = engine.conversation()
    users = [text(f"turn {t}", 15) + " What should the keeper do next?" for t in range(1, 5)]
    users.append("Given all of that, what is the single most important habit for the keeper?")
    cached: list[tuple[float, Finished]] = []
    full: list[tuple[float, Finished]] = []
    try:
        for r in range(setup.repeats):
            conv.reset()
            messages = [{"role": "system", "content": text("system", 30)}]
            for user in users[:4]:  # turns 1-4 fill the cache; short replies, the model's own text put back
                messages.append({"role": "user", "content": user})
                events = conv.generate(messages, thinking=False, sampling=Sampling(temperature=0, max_tokens=16))
                messages.append({"role": "assistant", "content": "".join(getattr(e, "text", "") for e in events)})
            messages.append({"role": "user", "content": users[4]})
            cached.append(first_token(conv, messages))
            conv.reset()  # the same turn with nothing cached: the whole conversation is evaluated
            full.append(first_token(conv, messages))
            print(f"  turn 5 round {r + 1}: cached {cached[-1][0] * 1e3:.1f} ms, full {full[-1][0] * 1e3:.1f} ms",
                  flush=True)
    finally:
        engine.close()
    row: dict[str, Any] = {}
    for name, pairs in (("cached", cached), ("full", full)):
        s = pairs[-1][1].stats
        row[f"{name}: reused/evaluated tokens"] = f"{s.cached_tokens}/{s.evaluated_tokens} of {s.prompt_tokens}"
        row[f"{name}: TTFT ms (prompt_seconds)"] = (f"{median([p[0] for p in pairs]) * 1e3:.1f} "
                                                   f"({median([p[1].stats.prompt_seconds for p in pairs]) * 1e3:.1f})")
    row["speed-up (TTFT full/cached)"] = round(median([f[0] for f in full]) / median([c[0] for c in cached]), 2)
    return row


# -- 3. image and video turns: tiles encoded one by one or batched, and with the embedding cache warm --------------
# name -> (kind, width, height, frames in the file for a video)
MEDIA = {"448x448, 1 tile": ("image", 448, 448, 0), "640x480, 13 tiles": ("image", 640, 480, 0),
         "video, 8 of 64 frames": ("video", 640, 480, 64), "video, 8 of 1800 frames": ("video", 640, 480, 1800)}


def media_part(kind: str, w: int, h: int, frames: int, work: Path) -> dict[str, Any]:
    if kind == "video":
        clip = write_clip(work / f"bench-{w}x{h}-{frames}.mp4", frames=frames, width=w, height=h, fps=30)
        return {"type": "video", "url": str(clip)}
    png = work / f"bench-{w}x{h}.png"
    y, x = np.mgrid[0:h, 0:w]
    Image.fromarray(np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x * y) % 256], -1).astype(np.uint8)).save(png)
    return {"type": "image", "path": str(png)}


def prompt_phase(conv: Conversation, messages: list[dict[str, Any]]) -> float:
    conv.reset()
    return first_token(conv, messages)[0]


def load_times(engine: Engine, messages: list[dict[str, Any]], repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of ``engine.load_media`` with the decoded-video cache cleared, and with it holding the video."""
    cold, warm = [], []
    for _ in range(repeats):
        engine.videos.clear()
        for times in (cold, warm):
            t0 = time.perf_counter()
            engine.load_media(messages)
            times.append(time.perf_counter() - t0)
    return cold, warm


def bench_image(setup: Setup, work: Path) -> dict[str, Any]:
    """TTFT of a one-image or one-video turn (KV cache reset each time): every tile encoded and every video decoded
    (caches cleared), one mtmd call per tile or in mtmd batches, then with the tiles' embeddings and the decoded
    video cached, as a later turn finds them. The three run in turn within each round, so that other load on the
    machine hits them alike; ratios are medians of per-round ratios."""
    engine = Engine(setup.model, LoadOptions(mmproj=setup.mmproj, n_ctx=setup.n_ctx, n_batch=N_BATCH,
                                             n_threads=setup.threads))
    conv, row = engine.conversation(), {}
    modes = {"one by one": VisionOptions(batch_encode=False), "batched": VisionOptions(batch_encode=True)}
    try:
        for name, (kind, w, h, frames) in MEDIA.items():
            messages = [{"role": "user", "content": [media_part(kind, w, h, frames, work),
                                                     {"type": "text", "text": f"Describe this {kind}."}]}]
            prompt_phase(conv, messages)  # warm-up: projector weights paged in
            runs: dict[str, list[float]] = {"tiles one by one": [], "tiles batched": [], "cache warm": []}
            for r in range(setup.repeats):
                for mode, options in modes.items():
                    engine.vision.options = options
                    engine.embeddings.clear()
                    engine.videos.clear()
                    runs[f"tiles {mode}"].append(prompt_phase(conv, messages))
                runs["cache warm"].append(prompt_phase(conv, messages))
                print(f"  {name}, round {r + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in runs.items()),
                      flush=True)
            for key, values in runs.items():
                row[f"{name}: TTFT ms, {key}"] = f"{median(values) * 1e3:.0f} (best {min(values) * 1e3:.0f})"
            ratio = median(a / b for a, b in zip(runs["tiles one by one"], runs["tiles batched"]))
            row[f"{name}: one by one / batched"] = f"{ratio:.2f}"
            if kind == "video":  # what the decoded-video cache saves: reading and decoding, cold and cached
                row[f"{name}: load ms, decoded / cached"] = " / ".join(
                    f"{median(loads) * 1e3:.1f}" for loads in load_times(engine, messages, setup.repeats))
    finally:
        engine.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "bench"), default="bench", help="synthetic Intern-S1-mini layout")
    parser.add_argument("--type", default="q8_0", help="the language model's GGUF type (default q8_0)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per decode run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--sections", default="123", help="which sections to run (default 123: all)")
    args = parser.parse_args()
    model, mmproj = model_files(args.size, args.type)
    setup = Setup(model, mmproj, args.n_ctx, args.threads, args.tokens, args.repeats)
    print(f"model {model.name} ({model.stat().st_size / 1e6:.0f} MB), {args.threads} threads, n_ctx {args.n_ctx}, "
          f"greedy, median of {args.repeats}", flush=True)
    with tempfile.TemporaryDirectory(prefix="interns1-bench-") as work:
        sections = {"1": ("1. decode", bench_decode), "2": ("2. TTFT at turn 5", bench_turn5),
                    "3": ("3. image and video turns", partial(bench_image, work=Path(work)))}
        report = {title: run(setup) for key, (title, run) in sections.items() if key in args.sections}
    print()
    for section, rows in report.items():
        print(section)
        for key, value in rows.items():
            print(f"  {key:34} {value}")
    print(f"\ncommand: python bench/runtime.py {shlex.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
