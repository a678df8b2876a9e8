"""Images of every size reach the model as transformers' InternVL processor gives them (SPEC 10): the same prompt
layout (``<img>`` + 256 positions per tile + ``</img>``), the same tile pixels through our F32 mmproj giving the
reference vision tower's embeddings, and the same greedy continuation as transformers' ``generate``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interns1_local.errors import UsageError
from interns1_local.runtime import vision
from interns1_local.runtime.backend import LoadOptions
from interns1_local.runtime.engine import Engine, Finished, ImageUnit, Sampling
from interns1_local.runtime.images import load_image
from interns1_local.runtime.vision import VisionOptions
from llama_helpers import rel_error
from test_vision_parity import TOLERANCE

# (width, height): the issue's sizes, with their real pixel counts (the tiling cost is the grid's, not the pixels').
SIZES = [(640, 480), (1920, 1080), (500, 500), (300, 900), (200, 100), (1000, 500), (40, 480), (448, 448)]
GREEDY_TOKENS = 4


def _picture(width: int, height: int) -> Image.Image:
    """Structure at every scale (gradients, a checkerboard, noise), so a wrong tile, order or stretch shows."""
    rng = np.random.default_rng(width * 7919 + height)
    y, x = np.mgrid[0:height, 0:width]
    checker = ((x * 16 // width + y * 16 // height) % 2) * 90
    img = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), checker + 60], -1)
    return Image.fromarray(np.clip(img + rng.integers(-25, 25, (height, width, 3)), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[tuple[int, int], str]:
    folder = tmp_path_factory.mktemp("tiles")
    out = {}
    for size in SIZES:
        path = folder / f"{size[0]}x{size[1]}.png"
        _picture(*size).save(path)
        out[size] = str(path)
    return out


@pytest.fixture(scope="module")
def engine(converted):
    files = converted("f32", "f32")
    eng = Engine(files.model.path, LoadOptions(mmproj=files.mmproj.path, n_ctx=4096, type_k="f32", type_v="f32",
                                               n_threads=2))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def processor(mini_ckpt: Path):
    from reference import load_processor

    return load_processor(mini_ckpt)


def _messages(source: str, **part: object) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "url": source, **part},
                                         {"type": "text", "text": "What is in this picture?"}]}]


def _layout(engine: Engine, messages: list[dict]) -> tuple[list[int], list[ImageUnit]]:
    """Our prompt as token ids, each image position written as the image token (as the reference writes it)."""
    prompt = engine.prepare(messages, thinking=False)
    try:
        image_id = engine.backend.metadata["interns1.image_token_id"]
        ids = [t for u in prompt.units for t in ([image_id] * u.n_pos if isinstance(u, ImageUnit) else [u])]
        return ids, [u for u in prompt.units if isinstance(u, ImageUnit)]
    finally:
        prompt.close()


def _reference_inputs(engine: Engine, processor, messages: list[dict], source: str, max_patches: int | None = None):
    text = engine.template.render(messages, add_generation_prompt=True, enable_thinking=False)
    kwargs = {} if max_patches is None else {"max_patches": max_patches}
    return processor(text=text, images=[load_image(source).image], return_tensors="pt", **kwargs)


def _image_features(reference, pixel_values: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = reference.model.get_image_features(pixel_values=pixel_values, vision_feature_layer=-1,
                                                 vision_feature_select_strategy="default")
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    return feats.reshape(-1, feats.shape[-1]).numpy()


def _our_features(engine: Engine, messages: list[dict]) -> np.ndarray:
    prompt = engine.prepare(messages, thinking=False)
    try:
        units = [u for u in prompt.units if isinstance(u, ImageUnit)]
        embds = engine.vision.encode_missing(units, prompt.chunks)
        return np.concatenate([embds[u.id].reshape(u.n_pos, -1) for u in units])
    finally:
        prompt.close()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_prompt_layout_matches_the_processor(engine, processor, pictures, size) -> None:
    messages = _messages(pictures[size])
    ref = _reference_inputs(engine, processor, messages, pictures[size])
    ours, tiles = _layout(engine, messages)
    assert ours == ref["input_ids"][0].tolist()
    assert len(tiles) == ref["pixel_values"].shape[0]
    assert len({u.id for u in tiles}) == len(tiles)  # every tile its own id (its own embedding)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tile_pixels_are_the_processors(engine, processor, pictures, size) -> None:
    """Byte for byte: the released image processor (torchvision's resize) cuts the same tiles, in the same order."""
    from interns1_local.runtime.tiling import cut

    ref = _reference_inputs(engine, processor, _messages(pictures[size]), pictures[size])["pixel_values"]
    ip = processor.image_processor
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (ip.image_mean, ip.image_std))
    expected = ((ref * std + mean) * 255).round().permute(0, 2, 3, 1).numpy()
    ours = np.stack([np.asarray(tile) for tile in cut(load_image(pictures[size]).image, engine.vision.limits)])
    assert ours.shape == expected.shape and np.array_equal(ours, expected)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tile_embeddings_match_the_vision_tower(engine, processor, reference, pictures, size) -> None:
    messages = _messages(pictures[size])
    ref = _image_features(reference, _reference_inputs(engine, processor, messages, pictures[size])["pixel_values"])
    ours = _our_features(engine, messages)
    err = rel_error(ours, ref)
    print(f"{size}: {ours.shape[0] // 256} tiles, max|diff|/std = {err:.2e}")
    assert ours.shape == ref.shape and err < TOLERANCE


def greedy_both(engine: Engine, reference, messages: list[dict], ref_in) -> tuple[Finished, list[int]]:
    """Our greedy reply to ``messages`` (thinking off) and transformers' ``generate`` on the processor's ``ref_in``."""
    with torch.no_grad():
        out = reference.generate(input_ids=ref_in["input_ids"], attention_mask=ref_in["attention_mask"],
                                 pixel_values=ref_in["pixel_values"], max_new_tokens=GREEDY_TOKENS, do_sample=False)
    with engine.conversation() as conv:
        done = list(conv.generate(messages, thinking=False,
                                  sampling=Sampling(temperature=0, max_tokens=GREEDY_TOKENS)))[-1]
    return done, out[0, ref_in["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_greedy_continuation_matches_generate(engine, processor, reference, pictures, size) -> None:
    messages = _messages(pictures[size])
    done, expected = greedy_both(engine, reference, messages,
                                 _reference_inputs(engine, processor, messages, pictures[size]))
    assert isinstance(done, Finished) and list(done.tokens) == expected
    (stat,) = done.stats.images
    assert stat.tiles * 256 + 2 == stat.positions and (stat.width, stat.height) == size


def test_a_shared_tile_id_is_caught(engine, reference, processor, pictures, monkeypatch) -> None:
    """With every tile of an image under one id (mtmd's own chunk ids), all tiles get the first one's embedding."""
    monkeypatch.setattr(vision, "_tile_name", lambda grid, index: "shared")
    messages = _messages(pictures[640, 480])
    ref = _image_features(reference, _reference_inputs(engine, processor, messages, pictures[640, 480])["pixel_values"])
    err = rel_error(_our_features(engine, messages), ref)
    print(f"shared tile id: max|diff|/std = {err:.2e}")
    assert err > 10 * TOLERANCE


@pytest.mark.parametrize("part, limit", [({"max_tiles": 4}, 4), ({"max_tiles": 1}, 1)])
def test_a_part_lowers_the_tiles(engine, processor, pictures, part, limit) -> None:
    messages = _messages(pictures[640, 480], **part)
    ref = _reference_inputs(engine, processor, messages, pictures[640, 480], max_patches=limit)
    assert _layout(engine, messages)[0] == ref["input_ids"][0].tolist()


def test_openai_detail_low_is_one_tile(engine, processor, pictures) -> None:
    source = pictures[1920, 1080]
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": source, "detail": "low"}},
                                             {"type": "text", "text": "What is in this picture?"}]}]
    # the template only knows "image" parts: the reference renders the same conversation written that way
    ref = _reference_inputs(engine, processor, _messages(source), source, max_patches=1)
    ids, tiles = _layout(engine, messages)
    assert ids == ref["input_ids"][0].tolist() and len(tiles) == 1
    with pytest.raises(UsageError, match="detail must be one of"):
        engine.prepare([{"role": "user", "content": [{"type": "image_url",
                                                      "image_url": {"url": source, "detail": "huge"}}]}])
    for bad in ("3", 0, 2.5):
        with pytest.raises(UsageError, match="max_tiles must be a whole number"):
            engine.prepare(_messages(source, max_tiles=bad))


def test_engine_max_tiles_is_the_reference_layout_for_that_limit(converted, processor, pictures) -> None:
    files = converted("f32", "f32")
    eng = Engine(files.model.path, LoadOptions(mmproj=files.mmproj.path, n_ctx=4096), vision=VisionOptions(max_tiles=6))
    try:
        for size in [(640, 480), (40, 480)]:
            messages = _messages(pictures[size])
            ref = _reference_inputs(eng, processor, messages, pictures[size], max_patches=6)
            assert _layout(eng, messages)[0] == ref["input_ids"][0].tolist()
        # a part may lower the engine's limit further, never raise it
        messages = _messages(pictures[640, 480], max_tiles=12)
        ref = _reference_inputs(eng, processor, messages, pictures[640, 480], max_patches=6)
        assert _layout(eng, messages)[0] == ref["input_ids"][0].tolist()
    finally:
        eng.close()


def test_tile_limits_come_from_the_mmproj(converted, mini_ckpt, processor, pictures, tmp_path) -> None:
    """The converter writes the processor's min/max_patches (its defaults when the file has none) into the mmproj;
    the runtime tiles by what the mmproj says."""
    import dataclasses
    import json

    from interns1_local.converters.gguf_out import NoProgress, write_gguf
    from interns1_local.converters.metadata import CLIP_RULES, resolve
    from interns1_local.runtime.tiling import TileLimits

    files = converted("f32", "f32")
    pre = json.loads((mini_ckpt / "preprocessor_config.json").read_text())
    assert vision.model_limits(files.mmproj.path) == TileLimits(pre["min_patches"], pre["max_patches"])
    written = {kv.key: kv.value for kv in resolve([r for r in CLIP_RULES if "tiles" in r.key], {"pre": {}})}
    assert written == {"clip.vision.preproc_min_tiles": 1, "clip.vision.preproc_max_tiles": 12}
    mm = files.mmproj
    kvs = [dataclasses.replace(kv, value=2) if kv.key == "clip.vision.preproc_max_tiles" else kv for kv in mm.kvs]
    two = tmp_path / "mmproj-two-tiles.gguf"
    write_gguf(two, mm.arch, kvs, mm.jobs, NoProgress())
    eng = Engine(files.model.path, LoadOptions(mmproj=two, n_ctx=2048))
    try:
        messages = _messages(pictures[640, 480])
        ref = _reference_inputs(eng, processor, messages, pictures[640, 480], max_patches=2)
        assert _layout(eng, messages)[0] == ref["input_ids"][0].tolist()
    finally:
        eng.close()


def _counting_encodes(monkeypatch) -> list[int]:
    """Tiles encoded, per mtmd batch call, from now on."""
    counted: list[int] = []

    def batch(self, todo):
        out = real_batch(self, todo)
        counted.append(len(out))
        return out

    real_batch = vision.Vision._encode_batch
    monkeypatch.setattr(vision.Vision, "_encode_batch", batch)
    return counted


def test_multi_turn_with_a_large_image_evaluates_only_new_tokens(engine, tmp_path, monkeypatch) -> None:
    encoded = _counting_encodes(monkeypatch)
    _picture(999, 500).save(tmp_path / "new.png")  # pixels no other test used: 2x1 tiles + thumbnail to encode
    messages = _messages(str(tmp_path / "new.png"))
    greedy = Sampling(temperature=0, max_tokens=4)
    with engine.conversation() as conv:
        first = list(conv.generate(messages, thinking=False, sampling=greedy))[-1]
        assert sum(encoded) == 3 and first.stats.cached_tokens == 0
        messages += [{"role": "assistant", "content": "A picture."}, {"role": "user", "content": "And the colours?"}]
        second = list(conv.generate(messages, thinking=False, sampling=greedy))[-1]
        s = second.stats
        assert sum(encoded) == 3  # nothing encoded again
        assert s.cached_tokens >= first.stats.prompt_tokens and s.evaluated_tokens < 40
        assert s.evaluated_tokens == s.prompt_tokens - s.cached_tokens
        conv.reset()  # the same conversation evaluated from nothing gives the same reply
        assert list(conv.generate(messages, thinking=False, sampling=greedy))[-1].tokens == second.tokens


def test_a_prompt_too_long_for_the_context_names_the_image_first(converted, pictures, monkeypatch) -> None:
    encoded = _counting_encodes(monkeypatch)
    files = converted("f32", "f32")
    eng = Engine(files.model.path, LoadOptions(mmproj=files.mmproj.path, n_ctx=2048))
    try:
        with pytest.raises(UsageError, match=r"640x480\.png \(640x480\): 13 tiles, 3330 positions") as info:
            list(eng.conversation().generate(_messages(pictures[640, 480]), thinking=False))
        assert "the context holds 2048" in str(info.value) and encoded == [] and len(eng.embeddings) == 0
    finally:
        eng.close()


def test_cli_max_tiles_and_stats(converted, processor, pictures, engine) -> None:
    import json
    import subprocess
    import sys

    files = converted("f32", "f32")
    source = pictures[640, 480]
    done = subprocess.run([sys.executable, "-m", "interns1_local", "run", str(files.model.path), "Describe it.",
                           "--image", source, "--max-tiles", "6", "--json", "--no-think", "--max-tokens", "1",
                           "--ctx-size", "2048", "--threads", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (image,) = json.loads(done.stdout)["stats"]["images"]
    ref = _reference_inputs(engine, processor, _messages(source), source, max_patches=6)
    assert image["tiles"] == ref["pixel_values"].shape[0] == 7 and image["grid"] == [3, 2]  # 3x2 + thumbnail
    assert image["positions"] == 7 * 256 + 2 and image["source"] == source


def test_two_images_in_one_message(engine, processor, pictures) -> None:
    a, b = pictures[300, 900], pictures[200, 100]
    messages = [{"role": "user", "content": [{"type": "image", "url": a}, {"type": "text", "text": "and"},
                                             {"type": "image", "url": b}, {"type": "text", "text": "Compare."}]}]
    text = engine.template.render(messages, add_generation_prompt=True, enable_thinking=False)
    ref = processor(text=text, images=[load_image(a).image, load_image(b).image], return_tensors="pt")
    ids, tiles = _layout(engine, messages)
    assert ids == ref["input_ids"][0].tolist() and len(tiles) == 4 + 3
