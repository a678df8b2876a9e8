"""The engine: conversations on one loaded model, each a llama.cpp sequence whose KV cache holds what was evaluated.

A turn renders the whole conversation with the GGUF's chat template, tokenises it (images become their 448x448 tiles,
each an mtmd chunk named by its image's pixel hash and its place: ``vision``), keeps the longest cached prefix,
evaluates only the rest, and streams typed events.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import mtmd_cpp as mtmd

from interns1_local.errors import ImageError, UsageError, VideoError

from .backend import Backend, LoadOptions
from .dyntok import DynamicTokenizer
from .generation import Finished, Generation, Sampling, Stats, sampling_defaults  # noqa: F401 - re-exported
from .guard import ContextGuard
from .images import ImageLimits, LoadedImage, load_image
from .messages import media_parts, template_messages
from .parsers import Event
from .template import ChatTemplate
from .video import LoadedVideo, VideoCache, VideoLimits, as_images, expand
from .vision import ImageStat, ImageUnit, Vision, VisionOptions, image_parts

Unit = int | ImageUnit
Media = LoadedImage | LoadedVideo


@dataclass
class Prompt:
    """A tokenised prompt: text tokens and image units; ``chunks`` holds mtmd's image data until ``close``."""

    units: list[Unit]
    chunks: Any
    thinking: bool
    seconds: float  # image loading, rendering, tokenising
    images: tuple[ImageStat, ...] = ()

    def close(self) -> None:
        if self.chunks is not None:
            mtmd.mtmd_input_chunks_free(self.chunks)
            self.chunks = None


class Engine:
    """One loaded model; ``conversation()`` hands out sequences of its context."""

    def __init__(self, model: Path, options: LoadOptions = LoadOptions(), limits: ImageLimits = ImageLimits(),
                 vision: VisionOptions = VisionOptions(), video: VideoLimits = VideoLimits()) -> None:
        with contextlib.ExitStack() as made:  # a template or tokenizer that fails frees the loaded model
            self.backend = made.enter_context(Backend(model, options))
            meta = self.backend.metadata
            self.template = ChatTemplate(meta.get("tokenizer.chat_template") or "", origin=str(model))
            self.defaults = sampling_defaults(meta)
            self.limits, self.video_limits = limits, video
            self.dyntok = (DynamicTokenizer.from_metadata(meta, lambda text: self.backend.tokenize(text, special=False))
                           if options.dynamic_tokenizer else None)
            self.vision = Vision(self.backend, meta, options.mmproj, vision)
            made.pop_all()
        self.embeddings = self.vision.cache  # tile id -> projector output
        self.videos = VideoCache()  # decoded videos: a conversation sends its videos again with every turn
        self._free = list(range(options.n_seq_max))
        self.guard = ContextGuard()  # a thread decoding on its own (the server's scheduler) holds it per round

    def conversation(self) -> Conversation:
        if not self._free:
            raise UsageError("every sequence of this context is in use; load with a larger n_seq_max")
        return Conversation(self, self._free.pop(0))

    def close(self, wait_s: float = 60.0) -> None:
        """Free the model and context, once a round another thread holds (``guard``) is over; if that round has not
        ended after ``wait_s`` seconds they stay allocated (see runtime/guard.py)."""
        self.guard.close(self.backend.close, wait_s)

    def load_media(self, messages: list[dict[str, Any]]) -> list[Media]:
        """The images and videos of ``messages`` in order, read and decoded within ``self.limits`` and
        ``self.video_limits`` (no llama.cpp involved, so a server runs this off the decoding thread)."""
        return [self._load(part) for part in media_parts(template_messages(messages))]

    def _load(self, part: dict[str, Any]) -> Media:
        """One ``{"type": "image"|"video", "url": ..., "frames": ...}`` part, read and decoded (videos once: the
        engine keeps them decoded, ``self.videos``)."""
        source, kind = part.get("url"), part["type"]
        if not isinstance(source, str) or not source:
            raise (VideoError if kind == "video" else ImageError)(
                f"{kind} part without a source: give it a url (a path, an http(s) URL or a data: URI)")
        if kind == "video":
            return self.videos.load(source, self.video_limits.count(part.get("frames")), self.video_limits, self.limits)
        return load_image(source, self.limits)

    def prepare(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                thinking: bool = True, media: list[Media] | None = None) -> Prompt:
        """Render the chat template and tokenise (loading images and videos unless given): what a sequence
        evaluates. A video's frames enter as one-tile images after ``FrameN: `` labels (runtime/video.py)."""
        t0 = time.perf_counter()
        messages = template_messages(messages)
        media = self.load_media(messages) if media is None else media
        text = self.template.render(messages, tools=tools, add_generation_prompt=True, enable_thinking=thinking)
        if not media:
            return Prompt(self.tokenize(text), None, thinking, time.perf_counter() - t0)
        images, parts, videos = as_images(media, image_parts(messages))
        text = expand(text, videos, self.vision.placeholder or "") if videos else text
        units, chunks, stats = self.vision.tokenize(text, images, parts, self.tokenize)
        return Prompt(units, chunks, thinking, time.perf_counter() - t0, stats)

    def prepare_text(self, text: str) -> Prompt:
        """A raw prompt, no chat template (text completions)."""
        t0 = time.perf_counter()
        return Prompt(self.tokenize(text), None, False, time.perf_counter() - t0)

    def tokenize(self, text: str) -> list[int]:
        """Text (added tokens written out included) -> ids: the dynamic tokenizer when loaded, else llama.cpp's."""
        return self.dyntok.encode(text) if self.dyntok else self.backend.tokenize(text)

    def piece(self, token: int) -> bytes:
        """A token's bytes; domain pieces through their SentencePiece model."""
        found = self.dyntok.piece(token) if self.dyntok else None
        return found if found is not None else self.backend.piece(token)


class Conversation:
    """One sequence of the engine's context, with the units its KV cache holds."""

    def __init__(self, engine: Engine, seq_id: int) -> None:
        self.engine, self.seq_id = engine, seq_id
        self.cached: list[Unit] = []

    def reset(self) -> None:
        self.engine.backend.truncate(self.seq_id, 0)
        self.cached = []

    def close(self) -> None:
        """Free the sequence (its KV cache) for another conversation."""
        if self.seq_id not in self.engine._free:
            self.reset()
            self.engine._free.append(self.seq_id)

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- prompt ------------------------------------------------------------------------------------------
    @staticmethod
    def _positions(units: list[Unit]) -> int:
        return sum(u.n_pos if isinstance(u, ImageUnit) else 1 for u in units)

    def _common_prefix(self, units: list[Unit]) -> int:
        k = 0
        for a, b in zip(self.cached, units):
            same = a == b if isinstance(a, int) and isinstance(b, int) else (
                isinstance(a, ImageUnit) and isinstance(b, ImageUnit) and a.id == b.id)
            if not same:
                break
            k += 1
        if k == len(units):  # everything cached: evaluate the last token again to get its logits
            k -= 1
        return k

    def _prefill(self, units: list[Unit], chunks: Any) -> tuple[int, int]:
        """Evaluate what the cache lacks; returns (positions reused, positions evaluated)."""
        be = self.engine.backend
        if not units:
            raise UsageError("the prompt is empty: nothing to continue from")
        k = self._common_prefix(units)
        pos = self._positions(units[:k])
        total = self._positions(units)
        if total >= be.n_ctx:
            raise UsageError(f"the conversation needs {total} tokens, the context holds {be.n_ctx}: "
                             "start a new conversation (/reset) or load with a larger context")
        be.truncate(self.seq_id, pos)
        self.cached = units[:k]
        embds = self.engine.vision.encode_missing([u for u in units[k:] if isinstance(u, ImageUnit)], chunks)
        start, i = pos, k
        while i < len(units):
            if isinstance(units[i], ImageUnit):
                self.engine.vision.decode(units[i], chunks, embds[units[i].id], pos, self.seq_id)
                pos += units[i].n_pos
                i += 1
                continue
            j = i
            while j < len(units) and isinstance(units[j], int):
                j += 1
            be.decode(list(units[i:j]), self.seq_id, pos, want_logits=j == len(units))
            pos += j - i
            i = j
        self.cached = list(units)
        return start, total - start

    # -- generation --------------------------------------------------------------------------------------
    def _sampler(self, s: Sampling, thinking: bool) -> Any:
        d = self.engine.defaults
        pick = lambda v, k: v if v is not None else d[k]  # noqa: E731
        temperature = pick(s.temperature, "temperature")
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = lambda smpl: llama_cpp.llama_sampler_chain_add(chain, smpl)  # noqa: E731
        if s.grammar is not None:
            add(self._grammar(s.grammar, thinking, chain))
        if s.presence_penalty or s.frequency_penalty or s.repeat_penalty != 1.0:
            n_vocab = llama_cpp.llama_vocab_n_tokens(self.engine.backend.vocab)
            add(llama_cpp.llama_sampler_init_penalties(n_vocab, s.penalty_last_n, s.repeat_penalty,
                                                       s.frequency_penalty, s.presence_penalty))
        if temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
            return chain
        add(llama_cpp.llama_sampler_init_top_k(int(pick(s.top_k, "top_k"))))
        add(llama_cpp.llama_sampler_init_top_p(float(pick(s.top_p, "top_p")), 1))
        add(llama_cpp.llama_sampler_init_min_p(float(pick(s.min_p, "min_p")), 1))
        add(llama_cpp.llama_sampler_init_temp(float(temperature)))
        add(llama_cpp.llama_sampler_init_dist(s.seed if s.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED))
        return chain

    def _grammar(self, grammar: str, thinking: bool, chain: Any) -> Any:
        vocab = self.engine.backend.vocab
        if thinking:  # the reasoning is free; the grammar starts after the model closes it
            patterns = (ctypes.c_char_p * 1)(rb"[\s\S]*?</think>\s*([\s\S]*)")
            smpl = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                vocab, grammar.encode(), b"root", patterns, 1, (llama_cpp.llama_token * 0)(), 0)
        else:
            smpl = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not smpl:
            llama_cpp.llama_sampler_free(chain)
            raise UsageError("the grammar could not be parsed (GBNF, with a rule named root)")
        return smpl

    def start(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
              thinking: bool = True, sampling: Sampling = Sampling(),
              cancel: threading.Event | None = None) -> Generation:
        """Render and tokenise the conversation, evaluate what the cache lacks, and return the reply's decoding
        state. ``generate`` drives it alone; a scheduler can batch several."""
        prompt = self.engine.prepare(messages, tools, thinking)
        try:
            return self.start_prompt(prompt, sampling, cancel)
        finally:
            prompt.close()

    def start_prompt(self, prompt: Prompt, sampling: Sampling, cancel: threading.Event | None = None) -> Generation:
        t0 = time.perf_counter()
        cached, evaluated = self._prefill(prompt.units, prompt.chunks)
        sampler = self._sampler(sampling, prompt.thinking)
        gen = Generation(self, self._positions(prompt.units), cached, evaluated,
                         prompt.seconds + time.perf_counter() - t0, sampler, prompt.thinking, sampling, cancel)
        gen.images = prompt.images
        return gen

    def shared_prefix(self, units: list[Unit]) -> int:
        """How many leading ``units`` this sequence's cache already holds."""
        return self._common_prefix(units)

    def adopt_prefix(self, source: Conversation, k: int) -> None:
        """Take the first ``k`` units of another sequence's cache (llama.cpp shares the KV cells, nothing is
        evaluated): a system prompt or an image one request evaluated serves the next ones."""
        pos = self._positions(source.cached[:k])
        self.engine.backend.truncate(self.seq_id, 0)
        self.engine.backend.copy_prefix(source.seq_id, self.seq_id, pos)
        self.cached = list(source.cached[:k])

    def generate(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                 thinking: bool = True, sampling: Sampling = Sampling(),
                 cancel: threading.Event | None = None) -> Iterator[Event | Finished]:
        """Stream the assistant's reply to ``messages`` (the whole conversation so far) as typed events. Setting
        ``cancel`` (from any thread) stops after the current token, still ending with ``Finished``."""
        gen = self.start(messages, tools, thinking, sampling, cancel)
        try:
            yield from gen.sample(-1)
            while gen.pending is not None:
                self.engine.backend.decode([gen.pending], self.seq_id, gen.pos, want_logits=True)
                gen.decoded()
                yield from gen.sample(-1)
            yield from gen.finish()
        finally:
            gen.free()
