"""Request bodies of the OpenAI and Ollama routes, validated by pydantic (and published in the OpenAPI schema).

Unknown fields are ignored (clients send many we do not use); known ones are type- and range-checked, so a client's
mistake is a 400 naming the field, never a 500.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_TEXT = 4_000_000  # characters in one text field
MAX_GRAMMAR = 100_000  # characters of a GBNF grammar
MAX_DEPTH = 100  # nesting of objects and arrays in a request (tool-call arguments included)


def text_field(default: str | None = None) -> Any:
    return Field(default=default, max_length=MAX_TEXT)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


def check_json(value: Any) -> Any:
    """Client JSON the server will walk (recursively: templates, grammars): refuse text that is not valid Unicode
    (JSON may escape lone surrogates, "\\udc34": no text, cannot be encoded) and nesting deeper than MAX_DEPTH
    (Python's stack ends near 1,000 levels). Walked without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("strings must be valid Unicode (a lone surrogate escape was found)") from None
        elif isinstance(item, (dict, list)) and depth > MAX_DEPTH:
            raise ValueError(f"JSON nested more than {MAX_DEPTH} levels deep")
        elif isinstance(item, dict):
            stack.extend((part, depth + 1) for part in [*item.keys(), *item.values()])
        elif isinstance(item, list):
            stack.extend((part, depth + 1) for part in item)
    return value


class _Request(_Lenient):
    """A whole request body: checked for invalid Unicode and deep nesting (``check_json``) before the fields are."""

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        return check_json(data)


# -- OpenAI ---------------------------------------------------------------------------------------------------------
class ImageURL(_Lenient):
    url: str = Field(max_length=40_000_000)  # data URIs of large images; the byte limit is checked when decoded
    detail: Literal["low", "high", "auto"] | None = None  # low: one 448 tile; high/auto: the model's tiling


class VideoURL(_Lenient):
    """Not in OpenAI's API (it takes no video); the spelling vLLM and SGLang accept, plus how many frames to sample."""

    url: str = Field(max_length=40_000_000)  # the byte limit is checked when read
    frames: int | None = Field(None, ge=1)  # at most the engine's VideoLimits.max_frames; default its frames


class ContentPart(_Lenient):
    type: Literal["text", "image_url", "video_url"]
    text: str | None = text_field()
    image_url: ImageURL | str | None = None
    video_url: VideoURL | str | None = None


class FunctionCall(_Lenient):
    name: str = Field(max_length=256)
    arguments: str = text_field("{}")  # a JSON object, as text (OpenAI's convention)


class ToolCallIn(_Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    reasoning_content: str | None = text_field()  # an earlier reply's reasoning, as this server returned it
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Lenient):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionName(_Lenient):
    name: str = Field(max_length=256)


class NamedToolChoice(_Lenient):
    """``{"type": "function", "function": {"name": ...}}``: call this tool."""

    type: Literal["function"] = "function"
    function: FunctionName


class JSONSchemaFormat(_Lenient):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class Sampled(_Request):
    """Sampling fields shared by chat and text completions."""

    model: str = Field(max_length=512)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    n: int | None = Field(default=None, ge=1)


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    enable_thinking: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    grammar: str | None = Field(default=None, max_length=MAX_GRAMMAR)  # GBNF, as llama.cpp's server accepts it


class CompletionRequest(Sampled):
    prompt: str | list[str] = Field(max_length=MAX_TEXT)


# -- Ollama ---------------------------------------------------------------------------------------------------------
class OllamaOptions(_Lenient):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    num_predict: int | None = None  # -1: until the context is full
    stop: list[str] | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    repeat_penalty: float = Field(default=1.0, ge=0)
    max_tiles: int | None = Field(default=None, ge=1)  # ours (Ollama has none): 448-pixel tiles per image, at most


class OllamaToolCall(_Lenient):
    function: dict[str, Any]


class OllamaMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = text_field("")
    thinking: str | None = text_field()  # an earlier reply's reasoning, as this server returned it
    images: list[str] | None = Field(default=None, max_length=16)
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None


class OllamaChatRequest(_Request):
    model: str = Field(max_length=512)
    messages: list[OllamaMessage] = Field(min_length=1, max_length=10_000)
    stream: bool = True
    think: bool | Literal["low", "medium", "high"] | None = None  # levels: Intern-S1 thinks or not, so "on"
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: OllamaOptions | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)


class OllamaGenerateRequest(_Request):
    model: str = Field(max_length=512)
    prompt: str = text_field("")
    system: str | None = None
    images: list[str] | None = Field(default=None, max_length=16)
    stream: bool = True
    think: bool | Literal["low", "medium", "high"] | None = None
    raw: bool = False
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: OllamaOptions | None = None


class OllamaShowRequest(_Request):
    model: str | None = Field(default=None, max_length=512)
    name: str | None = Field(default=None, max_length=512)  # older clients
