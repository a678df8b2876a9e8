"""GBNF grammars for constrained output: JSON (any, or matching a JSON schema) and forced InternLM tool calls.

The JSON-schema conversion is llama-cpp-python's (``llama_cpp.llama_grammar``), the same one its server uses.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from interns1_local.errors import UsageError

from .parsers import ACTION_END, ACTION_START, PLUGIN

MAX_SCHEMA_CHARS = 64_000  # a schema is untrusted input: the grammar it becomes grows with it
# llama-cpp-python's converter lets a string hold raw control characters, which JSON forbids (RFC 8259) and
# json.loads refuses; llama.cpp's own converter and JSON_GBNF exclude them, as this does.
_LOOSE_CHAR, _JSON_CHAR = r'char ::= [^"\\]', r'char ::= [^"\\\x7F\x00-\x1F]'


def json_grammar(schema: dict[str, Any] | None = None) -> str:
    """Any JSON object, or JSON matching ``schema``."""
    if schema is None:
        return JSON_GBNF
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_CHARS:
        raise UsageError(f"the JSON schema is larger than {MAX_SCHEMA_CHARS} characters")
    try:
        return json_schema_to_gbnf(text).replace(_LOOSE_CHAR, _JSON_CHAR)
    # the converter signals what it cannot handle in many ways (asserts included); the schema is the client's
    except (AssertionError, ValueError, KeyError, IndexError, TypeError, AttributeError, NotImplementedError,
            RecursionError) as exc:
        raise UsageError(f"unsupported JSON schema: {exc}") from None


def tool_call_grammar(tools: list[dict[str, Any]], name: str | None = None) -> str:
    """Exactly one tool call in InternLM's format, to ``name`` or any of ``tools``, its parameters per the schema."""
    functions = [t.get("function", t) for t in tools]
    if name is not None:
        functions = [f for f in functions if f.get("name") == name]
        if not functions:
            raise UsageError(f"tool_choice names {name!r}, which is not among the tools")
    choices = [{"type": "object", "properties": {"name": {"const": f["name"]},
                                                 "parameters": f.get("parameters") or {"type": "object"}},
                "required": ["name", "parameters"]} for f in functions]
    body = json_grammar(choices[0] if len(choices) == 1 else {"oneOf": choices})
    body = re.sub(r"^root\s*::=", "call ::=", body, count=1, flags=re.MULTILINE)
    return f"root ::= {json.dumps(ACTION_START + PLUGIN + chr(10))} call {json.dumps(ACTION_END)}\n{body}"
