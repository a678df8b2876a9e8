"""Video reaches the model as transformers' InternVL video processor gives it (SPEC 10): the same frames (its PyAV
reader and its midpoint sampling), ``Frame1: <img>...</img>\\n...`` in place of ``<video>``, each frame one 448 tile
through our F32 mmproj, and the same greedy continuation as transformers' ``generate`` fed those frames.

The frames' pixels are compared exactly: decoded, and stretched to 448 (torch's resize, reproduced without torch in
runtime/resample.py)."""

from __future__ import annotations

import base64
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interns1_local.errors import ImageError, UsageError, VideoError
from interns1_local.runtime import video as video_module
from interns1_local.runtime.engine import Engine, Finished, ImageUnit, Sampling
from interns1_local.runtime.parsers import TextDelta
from interns1_local.runtime.resample import resize_bicubic
from interns1_local.runtime.video import VideoCache, VideoLimits, load_video, sample_indices
from interns1_local.synth import write_clip
from llama_helpers import rel_error
from test_image_tiles import _counting_encodes, _image_features, _layout, engine, greedy_both  # noqa: F401 - engine: the F32 fixture
from test_vision_parity import TOLERANCE

from reference import load_processor, needs_torchvision, reference_video

needs_torchvision()

FRAMES = 8
# (file name, codec): the reference's reader needs the frame count in the header, which MP4 and AVI carry
CLIPS = {"clip.mp4": "libx264", "clip.avi": "mpeg4"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("video")
    out = {name: write_clip(folder / name, frames=45, codec=codec) for name, codec in CLIPS.items()}
    out["clip.webm"] = write_clip(folder / "clip.webm", frames=45, codec="libvpx-vp9")  # no count in its header
    out["short.mp4"] = write_clip(folder / "short.mp4", frames=5, width=96, height=64)
    return out


@pytest.fixture(scope="module")
def processor(mini_ckpt: Path):
    return load_processor(mini_ckpt, with_video=True)


def _messages(source: str, text: str = "What happens in this video?", **part: object) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "url": source, **part}, {"type": "text", "text": text}]}]


def _count_decodes(monkeypatch) -> list[str]:
    """The sources ``decode_video`` runs on from now on (the real decoder still runs)."""
    decoded: list[str] = []
    real = video_module.decode_video

    def spy(data, count, where, *args, **kwargs):
        decoded.append(where)
        return real(data, count, where, *args, **kwargs)

    monkeypatch.setattr(video_module, "decode_video", spy)
    return decoded


def _reference_inputs(engine: Engine, processor, messages: list[dict], path: Path, frames: int = FRAMES):
    text = engine.template.render(messages, add_generation_prompt=True, enable_thinking=False)
    array, _ = reference_video(path, processor.video_processor, frames)
    return processor(text=text, videos=[array], return_tensors="pt")


def test_sampling_matches_the_video_processor(processor) -> None:
    from transformers.video_utils import VideoMetadata

    sample = processor.video_processor.sample_frames
    checked = 0
    for total in range(1, 300):
        for count in range(1, min(total, 64) + 1):
            expected = sample(VideoMetadata(total_num_frames=total, fps=25.0), num_frames=count).tolist()
            assert sample_indices(total, count) == expected, (total, count)
            checked += 1
    assert checked > 10_000
    assert sample_indices(5, 8) == [0, 1, 2, 3, 4]  # fewer frames than asked: all of them (the reference refuses)


@pytest.mark.parametrize("size", [(160, 120), (1920, 1080), (333, 777), (64, 48), (448, 300), (7, 3), (4000, 1)])
def test_resample_is_torchs_bicubic_byte_for_byte(size) -> None:
    import torchvision.transforms.v2.functional as tvF

    for seed in range(2):
        rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        expected = tvF.resize(torch.from_numpy(rgb).permute(2, 0, 1), [448, 448], antialias=True,
                              interpolation=tvF.InterpolationMode.BICUBIC).permute(1, 2, 0).numpy()
        assert np.array_equal(resize_bicubic(rgb, 448, 448), expected)
    pil = np.asarray(Image.fromarray(rgb).resize((448, 448), Image.Resampling.BICUBIC))
    print(f"{size}: PIL's bicubic differs on {(pil != expected).mean():.2%} of values")  # why not PIL


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_frames_are_the_reference_processors(engine, processor, clips, name) -> None:
    """The same indices, and the same pixels as the video processor's pixel_values."""
    ours = load_video(str(clips[name]), FRAMES)
    _, indices = reference_video(clips[name], processor.video_processor, FRAMES)
    assert list(ours.indices) == indices and ours.total_frames == 45
    ref = _reference_inputs(engine, processor, _messages(str(clips[name])), clips[name])
    vp = processor.video_processor
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (vp.image_mean, vp.image_std))
    ref_pixels = ((ref["pixel_values"] * std + mean) * 255).round().permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.stack([np.asarray(f.image) for f in ours.frames]), ref_pixels)


def test_a_header_without_a_frame_count_is_counted(clips, processor) -> None:
    """WebM carries no frame count: the reference's reader fails on it; we count the frames and sample the same."""
    from transformers.video_utils import VideoMetadata

    ours = load_video(str(clips["clip.webm"]), FRAMES)
    expected = processor.video_processor.sample_frames(VideoMetadata(total_num_frames=45, fps=10.0), FRAMES)
    assert list(ours.indices) == expected.tolist()
    with pytest.raises(ValueError):
        reference_video(clips["clip.webm"], processor.video_processor, FRAMES)


@pytest.mark.parametrize("frames", [FRAMES, 3])
def test_prompt_layout_matches_the_processor(engine, processor, clips, frames) -> None:
    messages = _messages(str(clips["clip.mp4"]), frames=frames)
    ref = _reference_inputs(engine, processor, messages, clips["clip.mp4"], frames)
    ours, units = _layout(engine, messages)
    assert ours == ref["input_ids"][0].tolist()
    assert len(units) == ref["pixel_values"].shape[0] == frames
    assert len({u.id for u in units}) == frames


def test_an_image_and_a_video_in_one_message(engine, processor, clips, tmp_path) -> None:
    picture = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (300, 640, 3), dtype=np.uint8)).save(picture)
    messages = [{"role": "user", "content": [{"type": "image", "url": str(picture)},
                                             {"type": "video", "url": str(clips["clip.avi"])},
                                             {"type": "text", "text": "Compare them."}]}]
    text = engine.template.render(messages, add_generation_prompt=True, enable_thinking=False)
    array, _ = reference_video(clips["clip.avi"], processor.video_processor, FRAMES)
    ref = processor(text=text, images=[Image.open(picture).convert("RGB")], videos=[array], return_tensors="pt")
    ours, units = _layout(engine, messages)
    assert ours == ref["input_ids"][0].tolist() and len(units) == ref["pixel_values"].shape[0]


def test_frame_embeddings_match_the_vision_tower(engine, processor, reference, clips) -> None:
    messages = _messages(str(clips["clip.mp4"]))
    ref = _image_features(reference, _reference_inputs(engine, processor, messages, clips["clip.mp4"])["pixel_values"])
    prompt = engine.prepare(messages, thinking=False)
    try:
        units = [u for u in prompt.units if isinstance(u, ImageUnit)]
        embds = engine.vision.encode_missing(units, prompt.chunks)
        ours = np.concatenate([embds[u.id].reshape(u.n_pos, -1) for u in units])
    finally:
        prompt.close()
    err = rel_error(ours, ref)
    print(f"{len(units)} frames: max|diff|/std = {err:.2e}")
    assert ours.shape == ref.shape and err < TOLERANCE


def test_greedy_continuation_matches_generate(engine, processor, reference, clips) -> None:
    messages = _messages(str(clips["clip.mp4"]))
    done, expected = greedy_both(engine, reference, messages,
                                 _reference_inputs(engine, processor, messages, clips["clip.mp4"]))
    assert isinstance(done, Finished) and list(done.tokens) == expected
    assert len(done.stats.images) == FRAMES and all(s.tiles == 1 for s in done.stats.images)


def test_a_second_turn_encodes_no_frame_again(engine, clips, monkeypatch) -> None:
    monkeypatch.setattr(engine, "videos", VideoCache())
    decoded = _count_decodes(monkeypatch)
    encoded = _counting_encodes(monkeypatch)
    engine.vision.cache.clear()
    messages = _messages(str(clips["clip.avi"]), frames=4)
    few = Sampling(temperature=0, max_tokens=3)
    with engine.conversation() as conv:
        first = list(conv.generate(messages, thinking=False, sampling=few))
        assert sum(encoded) == 4 and len(decoded) == 1
        answer = "".join(e.text for e in first if isinstance(e, TextDelta))
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
        second = list(conv.generate(messages, thinking=False, sampling=few))[-1]
    assert sum(encoded) == 4 and len(decoded) == 1  # no frame decoded or encoded again
    stats = second.stats
    assert stats.cached_tokens >= 4 * 256 and stats.evaluated_tokens < 40  # only the new turn was evaluated


def test_decoded_videos_are_kept_by_content_and_bounded(clips, tmp_path, monkeypatch) -> None:
    decoded = _count_decodes(monkeypatch)
    cache = VideoCache(max_bytes=8 * 448 * 448 * 3)  # eight frames' pixels
    path = tmp_path / "v.mp4"
    path.write_bytes(clips["clip.mp4"].read_bytes())
    first = cache.load(str(path), 4)
    assert cache.load(str(path), 4) is first and len(decoded) == 1
    assert cache.load(str(path), 3) is not first and len(decoded) == 2  # another frame count: another entry
    write_clip(path, frames=20)  # the same name, other bytes: decoded again, never the stale frames
    changed = cache.load(str(path), 4)
    assert len(decoded) == 3 and changed.total_frames == 20 and first.total_frames == 45
    # 4 + 3 + 4 frames do not fit in eight: the least recently used (the first) went
    assert len(cache) == 2 and cache.nbytes == 7 * 448 * 448 * 3
    assert cache.load(str(path), 4) is changed and len(decoded) == 3
    with pytest.raises(VideoError, match="file not found"):
        cache.load(str(tmp_path / "gone.mp4"), 4)


def test_a_header_that_overstates_the_frame_count_is_resampled(clips, tmp_path) -> None:
    data = bytearray(clips["clip.avi"].read_bytes())
    # AVI records the count twice, avih's dwTotalFrames and the video strh's dwLength: make both claim 60 of the 45
    for tag, offset in ((b"avih", 16), (b"strh", 32)):
        at = data.find(tag) + 8 + offset
        assert struct.unpack_from("<I", data, at) == (45,)
        struct.pack_into("<I", data, at, 60)
    (tmp_path / "overstated.avi").write_bytes(data)
    video = load_video(str(tmp_path / "overstated.avi"), FRAMES)
    honest = load_video(str(clips["clip.avi"]), FRAMES)  # the reference's frames (test_frames_are_the_...)
    assert video.total_frames == 45 and video.indices == honest.indices  # sampled on the frames that are there
    assert [f.sha256 for f in video.frames] == [f.sha256 for f in honest.frames]


def test_fewer_frames_than_asked_gives_them_all(engine, clips) -> None:
    video = load_video(str(clips["short.mp4"]), FRAMES)
    assert video.indices == (0, 1, 2, 3, 4) and (video.width, video.height) == (96, 64)


# -- bad input ------------------------------------------------------------------------------------------------
def test_corrupt_truncated_and_foreign_files_are_clear_errors(clips, tmp_path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match="not a video"):
        load_video(str(junk), FRAMES)
    cut = tmp_path / "cut.mp4"
    data = clips["clip.mp4"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError):
        load_video(str(cut), FRAMES)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 100)
    with pytest.raises(VideoError):
        load_video(str(text), FRAMES)


def _with_audio(path: Path, video: bool) -> Path:
    """A file of one second of silence, with an empty video stream beside it or none (AVI keeps an empty stream;
    MP4 drops it)."""
    import av

    with av.open(str(path), mode="w") as container:
        if video:
            stream = container.add_stream("mpeg4", rate=Fraction(10))
            stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("aac", rate=8000)
        audio.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return path


def test_files_without_frames_are_clear_errors(tmp_path) -> None:
    with pytest.raises(VideoError, match="no frames"):
        load_video(str(_with_audio(tmp_path / "empty.avi", video=True)), FRAMES)
    with pytest.raises(VideoError, match="no video stream"):
        load_video(str(_with_audio(tmp_path / "sound.mp4", video=False)), FRAMES)


def test_limits(clips, tmp_path) -> None:
    source = str(clips["clip.mp4"])
    with pytest.raises(VideoError, match="too large"):
        load_video(source, FRAMES, VideoLimits(max_bytes=1000))
    with pytest.raises(VideoError, match="s long"):
        load_video(source, FRAMES, VideoLimits(max_duration_s=1.0))
    with pytest.raises(VideoError, match="pixels"):
        load_video(source, FRAMES, VideoLimits(max_pixels=100 * 100))
    with pytest.raises(VideoError, match="more than 10 frames"):
        load_video(source, FRAMES, VideoLimits(max_decoded_frames=10))
    with pytest.raises(VideoError, match="decoding took"):
        load_video(source, FRAMES, VideoLimits(decode_timeout_s=0.0))
    with pytest.raises(VideoError, match="frames must be"):
        VideoLimits().count(65)
    with pytest.raises(UsageError, match="--frames"):
        VideoLimits().with_frames(0)


def test_sources_follow_the_image_rules(clips, engine) -> None:
    """Data URIs work; a server's file root and URL rules apply to videos as they do to images."""
    from interns1_local.runtime.images import ImageLimits

    uri = "data:video/mp4;base64," + base64.b64encode(clips["clip.mp4"].read_bytes()).decode()
    assert load_video(uri, 4).indices == tuple(sample_indices(45, 4))
    with pytest.raises(VideoError, match="not allowed"):
        load_video(str(clips["clip.mp4"]), 4, reading=ImageLimits(allow_files=False))
    with pytest.raises(VideoError, match="URLs are not allowed"):
        load_video("http://example.com/v.mp4", 4, reading=ImageLimits(allow_urls=False))
    for part in ({"type": "video_url"}, {"type": "video_url", "video_url": {"url": ""}}, {"type": "video"}):
        with pytest.raises(VideoError, match="without a source"):  # found by the server's fuzz test (was a 500)
            engine.load_media([{"role": "user", "content": [part]}])
    with pytest.raises(ImageError, match="without a source"):
        engine.load_media([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}])
    with pytest.raises(VideoError, match="placeholders"):  # a message that writes <video> itself
        engine.prepare(_messages(str(clips["clip.mp4"]), text="see <video>"), thinking=False)


# -- the commands -----------------------------------------------------------------------------------------------
def test_cli_run_with_a_video(converted, clips) -> None:
    import json
    import subprocess
    import sys

    files = converted("f32", "f32")
    cli = [sys.executable, "-m", "interns1_local", "run", str(files.model.path), "What moves?", "--video",
           str(clips["clip.mp4"]), "--json", "--no-think", "--temperature", "0", "--max-tokens", "3"]
    done = subprocess.run([*cli, "--frames", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)["stats"]
    assert [s["source"].rsplit(" ", 1)[-1] for s in stats["images"]] == [str(i) for i in sample_indices(45, 2)]
    bad = subprocess.run([*cli[:7], str(clips["clip.mp4"]) + ".missing"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "file not found" in bad.stderr
    too_many = subprocess.run([*cli, "--frames", "65"], capture_output=True, text=True, timeout=300)
    assert too_many.returncode == 2 and "--frames must be from 1 to 64" in too_many.stderr


def test_chat_video_command(engine, clips, monkeypatch) -> None:
    from interns1_local.chat import ChatSession

    monkeypatch.setattr(engine, "videos", VideoCache())
    decoded = _count_decodes(monkeypatch)
    session = ChatSession(engine, None, False, Sampling(temperature=0, max_tokens=2))
    try:
        said = session.command(f"/video {clips['clip.avi']}")
        assert "45 frames at 10 fps" in said and f"as {FRAMES} frames" in said
        turn = session.send("What moves?", lambda event: None)
        assert len(turn.stats.images) == FRAMES and session.pending == []
        session.send("And then?", lambda event: None)
        assert len(decoded) == 1  # checked at /video, then sent twice (in the history) without decoding again
        with pytest.raises(VideoError):
            session.command(f"/video {clips['clip.avi']}.missing")
    finally:
        session.conversation.close()
