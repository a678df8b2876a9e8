"""Render a GGUF's chat template exactly as transformers' ``apply_chat_template`` does, without transformers.

Replicates transformers 5.23 (``transformers/utils/chat_template_utils.py`` and ``PreTrainedTokenizerBase.
apply_chat_template``): an ``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension and a no-op ``{% generation %}`` tag; its ``tojson`` filter (``json.dumps`` with
``ensure_ascii=False`` and no HTML escaping, ``indent``/``separators``/``sort_keys`` passed through); the globals
``raise_exception``, ``strftime_now``, a restricted ``dict`` and an underscore-refusing ``namespace``; and its input
handling: top-level ``None`` message keys dropped, every input rebuilt from plain JSON types, reasoning copied between
``reasoning_content``/``thinking``/``reasoning``, ``documents`` always defined, special tokens as variables that extra
keyword arguments may override.

Not replicated: tools given as Python callables (transformers builds a JSON schema from the signature and docstring;
pass the schema instead), ``continue_final_message`` and assistant-token masks.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.runtime
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from interns1_local.errors import ChatTemplateError

# Older jinja2 releases have known sandbox escapes; chat templates come from model files, so they are untrusted code.
_MIN_JINJA2 = (3, 1, 6)

# A message's reasoning travels under several names; templates read the first (transformers' _REASONING_FIELDS).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")

# Python exceptions a template can raise while rendering (bad operands, missing keys, deep recursion), besides jinja2's
# own TemplateError family. Anything else is a bug here and should propagate.
_RENDER_ERRORS = (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError,
                  RecursionError)

Message = Mapping[str, Any]


class ChatTemplate:
    """A chat template compiled once; ``render`` gives the prompt text that transformers would give."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", *, origin: str | None = None) -> None:
        """Compile ``source``. ``origin`` (e.g. the GGUF path) names the template in error messages."""
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._origin = origin or "chat template"
        _check_jinja2_version(self._origin)
        try:
            self._compiled = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(
                f"the template does not compile: {exc.message} (template line {exc.lineno}); fix the template text "
                "or pass a different one", self._origin) from exc

    def render(self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None,
               add_generation_prompt: bool = True, documents: Sequence[Mapping[str, Any]] | None = None,
               **kwargs: Any) -> str:
        """Render a conversation. Extra keyword arguments (``enable_thinking=False``...) become template variables.

        ``add_generation_prompt`` defaults to True (transformers' default is False): the runtime renders prompts to
        generate from. Raises ``ChatTemplateError`` when the inputs are malformed or the template fails or refuses.
        """
        # transformers passes only the special tokens a tokenizer has, so a missing one stays undefined here too.
        special = (("bos_token", self.bos_token), ("eos_token", self.eos_token))
        tokens = {name: token for name, token in special if token}
        variables = {**tokens, **kwargs}
        context = {
            "messages": _prepare_messages(messages, self._origin),
            "tools": _plain(_check_dicts(tools, "tools", self._origin)),
            "documents": _plain(_check_dicts(documents, "documents", self._origin)),
            "add_generation_prompt": add_generation_prompt,
            **_plain(variables),
        }
        try:
            return self._compiled.render(**context)
        except _RENDER_ERRORS as exc:
            raise ChatTemplateError(_describe_render_error(exc), self._origin) from exc


def _environment() -> ImmutableSandboxedEnvironment:
    """The jinja2 environment transformers renders chat templates in."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # jinja2's own tojson escapes <, >, & and ' for HTML and sorts keys; prompts need the JSON as written.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format: str) -> str:  # noqa: A002 - the name templates call it with
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict(...)`` for templates, without exposing the ``dict`` type itself (its attributes are an escape route)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore attributes, which could reach CPython internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja2's signature trick, so namespace(self=1) works
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}. "
                "Please rename the attribute.")


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; rendering ignores it."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: jinja2.runtime.Macro) -> str:
        return caller()


def _prepare_messages(messages: Sequence[Message], origin: str) -> list[dict[str, Any]]:
    """The conversation as transformers hands it to the template."""
    if not messages:
        raise ChatTemplateError("the conversation is empty; pass at least one message", origin)
    prepared = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(
                f"message {index} is a {type(message).__name__}, not a dict with 'role' and 'content'", origin)
        # APIs send content=None or tool_calls=None; templates handle a missing key but would render "None".
        prepared.append(_alias_reasoning(_plain({k: v for k, v in message.items() if v is not None})))
    return prepared


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    """Fill ``reasoning_content`` from older names, and ``thinking`` for templates that read that name."""
    reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _check_dicts(items: Sequence[Any] | None, what: str, origin: str) -> Sequence[Any] | None:
    if items is None:
        return None
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ChatTemplateError(
                f"{what}[{index}] is a {type(item).__name__}; pass {what} as JSON-schema dicts", origin)
    return items


def _plain(value: Any) -> Any:
    """Rebuild ``value`` from plain JSON types, as transformers does before rendering.

    Rich objects in inputs (decoded images, arrays) have methods the sandbox does not know are dangerous, so anything
    that is not JSON-like becomes an inert placeholder naming its type, e.g. ``"<Image>"``.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind, convert in _PLAIN_CONVERSIONS:
        if isinstance(value, kind):
            return convert(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # One level at a time, so arrays and images inside are not deep-copied.
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic models
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


# Order matters: str/int/float subclasses (enums, numpy scalars) are stripped back to their base type first.
_PLAIN_CONVERSIONS: tuple[tuple[type | tuple[type, ...], Any], ...] = (
    (str, str.__str__),
    (int, int.__int__),
    (float, float.__float__),
    (Mapping, lambda v: {_plain(key): _plain(item) for key, item in v.items()}),
    (list, lambda v: [_plain(item) for item in v]),
    (tuple, lambda v: tuple(_plain(item) for item in v)),
    (np.generic, lambda v: _plain(v.item())),  # np.bool_(False) would otherwise become a truthy placeholder
)


def _describe_render_error(exc: BaseException) -> str:
    """What went wrong while rendering, and where in the template."""
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == "<template>"]
    where = f" (template line {lines[-1]})" if lines else ""
    if type(exc) is jinja2.exceptions.TemplateError:
        # raise_exception(): the template refusing the conversation, e.g. roles that do not alternate.
        return f"the template rejected the conversation: {exc}{where}; change the messages to what it accepts"
    return (f"rendering failed: {type(exc).__name__}: {exc}{where}; the messages or tools may not have the fields "
            "this template expects")


def _check_jinja2_version(origin: str) -> None:
    version = tuple(int(part) for part in jinja2.__version__.split(".")[:3] if part.isdigit())
    if version < _MIN_JINJA2:
        raise ChatTemplateError(
            f"jinja2 {jinja2.__version__} has known sandbox escapes; chat templates need jinja2 >= 3.1.6 "
            "(pip install -U jinja2)", origin)
