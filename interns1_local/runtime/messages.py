"""Messages as callers write them -> the form Intern-S1's chat template reads.

The released template knows three kinds of content part: ``text``, ``image`` (-> ``<IMG_CONTEXT>``) and ``video``
(-> ``<video>``); it silently drops any other type (OpenAI's ``image_url`` among them) and fails on ``content: null``.
So every spelling a caller may use (OpenAI's ``image_url``, the Responses API's ``input_text``/``input_image``, a bare
``{"type": "image", "path": ...}``) becomes one of those here, once, before images are loaded and the template renders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from interns1_local.errors import ChatTemplateError

# part type as callers send it -> the type the template reads
PART_TYPES = {"text": "text", "input_text": "text", "image": "image", "image_url": "image", "input_image": "image",
              "video": "video", "video_url": "video"}
# where a part may hold its media, first found wins; OpenAI nests it as {"image_url": {"url": ...}}
_SOURCE_KEYS = ("url", "path", "image", "image_url", "video", "video_url")


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with ``content: null`` as ``""`` and every content part as ``{"type": "text", "text": ...}``,
    ``{"type": "image", "url": ...}`` or ``{"type": "video", "url": ...}``. Other keys pass through unchanged
    (``reasoning_content`` included: the template needs it to rebuild the turns of a tool loop as they were cached).
    Raises ``ChatTemplateError`` for a part type no template reads."""
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            out.append(message)  # the template reports what is wrong with it
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = [_part(part, index) for part in content]
        out.append({**message, "content": "" if content is None else content})
    return out


def media_parts(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The image and video parts of ``template_messages`` output, in the order the prompt places them."""
    return [part for message in messages if isinstance(message, Mapping)
            for part in (message.get("content") if isinstance(message.get("content"), list) else [])
            if isinstance(part, Mapping) and part.get("type") in ("image", "video")]


def _part(part: Any, index: int) -> Any:
    if not isinstance(part, Mapping):
        raise ChatTemplateError(f"message {index}: a content part is a {type(part).__name__}, not a dict with a 'type'")
    kind = PART_TYPES.get(part.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise ChatTemplateError(f"message {index}: content part type {part.get('type')!r} is not supported; "
                         f"use one of {', '.join(PART_TYPES)}")
    if kind == "text":
        return {"type": "text", "text": part.get("text") or ""}
    source = next((part[key] for key in _SOURCE_KEYS if part.get(key)), None)
    detail, frames = part.get("detail"), part.get("frames")
    if isinstance(source, Mapping):
        detail, frames = source.get("detail", detail), source.get("frames", frames)
        source = source.get("url")
    # how many tiles (OpenAI's detail, our max_tiles) or video frames the caller asks for: read by runtime/vision.py
    # and runtime/video.py, not by the template
    limits = {k: v for k, v in (("detail", detail), ("max_tiles", part.get("max_tiles")), ("frames", frames))
              if v is not None}
    return {"type": kind, "url": source, **limits}
