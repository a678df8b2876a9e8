"""Request bodies of OpenAI's Responses API and Anthropic's Messages API (the agent clients' APIs), validated by
pydantic like the chat routes' (schemas.py): unknown fields ignored, known ones type- and range-checked, every item
type named so that a wrong one is a 400 naming the field, and all of it in the OpenAPI schema the fuzz test reads."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from .schemas import MAX_TEXT, _Lenient, _Request, text_field

MAX_ITEMS = 10_000  # input items / messages in one request
MAX_TOOLS = 128


def url_field() -> Any:
    return Field(default=None, max_length=40_000_000)  # data URIs of large images; bytes are checked when decoded


# -- OpenAI Responses -----------------------------------------------------------------------------------------------
class InputText(_Lenient):
    type: Literal["input_text", "output_text", "text", "summary_text", "reasoning_text", "refusal"]
    text: str | None = text_field()
    refusal: str | None = text_field()


class InputImage(_Lenient):
    type: Literal["input_image"]
    image_url: str | None = url_field()
    file_id: str | None = None  # no Files API here: refused with a clear 400
    detail: str | None = None


class InputFile(_Lenient):
    type: Literal["input_file"]  # refused with a clear 400 (no file inputs)


Part = Annotated[InputText | InputImage | InputFile, Field(discriminator="type")]


class MessageItem(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part] = Field(max_length=MAX_TEXT)
    id: str | None = None


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: str = Field(max_length=256)
    name: str = Field(max_length=256)
    arguments: str = text_field("{}")
    id: str | None = None


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    call_id: str = Field(max_length=256)
    output: str | list[Part] = Field(max_length=MAX_TEXT)


class ReasoningItem(_Lenient):
    type: Literal["reasoning"]
    summary: list[InputText] = Field(default_factory=list, max_length=1000)
    content: list[InputText] | None = Field(default=None, max_length=1000)
    encrypted_content: str | None = None  # ours are never encrypted; a foreign one is ignored
    id: str | None = None


Item = Annotated[FunctionCallItem | FunctionCallOutputItem | ReasoningItem, Field(discriminator="type")]


class FunctionTool(_Lenient):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class HostedTool(_Lenient):
    """OpenAI's hosted tools (web search, file search, computer use...): listed so the 400 can name them."""

    type: Literal["web_search", "web_search_preview", "file_search", "computer_use_preview", "code_interpreter",
                  "image_generation", "mcp", "local_shell", "custom"]


class TextFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextOptions(_Lenient):
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningOptions(_Lenient):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: str | None = None


class NamedFunction(_Lenient):
    type: Literal["function"]
    name: str = Field(max_length=256)


class ResponsesRequest(_Request):
    model: str = Field(max_length=512)
    input: str | list[MessageItem | Item] = Field(max_length=MAX_TEXT)
    instructions: str | None = text_field()
    tools: list[Annotated[FunctionTool | HostedTool, Field(discriminator="type")]] | None = Field(
        default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # the rest: extensions, as on the chat route
    min_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    stream: bool = False
    store: bool = False  # stateless unless asked (OpenAI's default is true; a local server keeps nothing unasked)
    previous_response_id: str | None = Field(default=None, max_length=256)
    parallel_tool_calls: bool | None = None
    metadata: dict[str, Any] | None = None


# -- Anthropic Messages ---------------------------------------------------------------------------------------------
class ImageSource(_Lenient):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = url_field()
    url: str | None = url_field()


class TextBlock(_Lenient):
    type: Literal["text"]
    text: str = text_field("")


class ImageBlock(_Lenient):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Lenient):
    type: Literal["tool_use"]
    id: str = Field(max_length=256)
    name: str = Field(max_length=256)
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(_Lenient):
    type: Literal["tool_result"]
    tool_use_id: str = Field(max_length=256)
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = text_field("")
    is_error: bool | None = None


class ThinkingBlock(_Lenient):
    type: Literal["thinking", "redacted_thinking"]
    thinking: str = text_field("")
    signature: str | None = None


class DocumentBlock(_Lenient):
    type: Literal["document", "search_result", "server_tool_use", "web_search_tool_result"]  # refused: a clear 400


Block = Annotated[TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | DocumentBlock,
                  Field(discriminator="type")]


class AnthropicMessage(_Lenient):
    role: Literal["user", "assistant"]
    content: str | list[Block] = Field(max_length=MAX_TEXT)


class AnthropicTool(_Lenient):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None  # "custom" or absent; a server tool ("web_search_20250305"...) is refused


class AnthropicToolChoice(_Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, max_length=256)
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(_Lenient):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1)


class CountTokensRequest(_Request):
    model: str = Field(max_length=512)
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=MAX_ITEMS)
    system: str | list[TextBlock] | None = text_field()
    tools: list[AnthropicTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: AnthropicToolChoice | None = None
    thinking: ThinkingConfig | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=16)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool = False
    metadata: dict[str, Any] | None = None
