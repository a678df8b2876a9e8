"""Typed errors. Each says what went wrong, where, and how to fix it.

The CLI maps them to exit messages in one table (``cli.EXIT_CODES``); nothing matches on message text.
"""

from __future__ import annotations

from pathlib import Path


class InternS1Error(Exception):
    """Base class for every error this package raises on purpose."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)


class CheckpointError(InternS1Error):
    """The input checkpoint is missing files, truncated, inconsistent or of an unknown kind."""


class PlanError(InternS1Error):
    """The conversion plan does not cover the checkpoint: tensors missing or unexpected, shapes wrong."""


class OutputError(InternS1Error):
    """The output cannot be written: directory not writable, not enough free disk."""


class GGUFFileError(InternS1Error):
    """A GGUF file cannot be read."""


class ModelFileError(GGUFFileError):
    """A readable GGUF that is not what the command needs: a projector or another architecture where a language model
    goes, keys the runtime reads missing or of the wrong kind, tensor data cut short."""


class UnsupportedTypeError(InternS1Error):
    """A quantisation type that this conversion does not offer."""


class UsageError(InternS1Error):
    """A command-line value that cannot be used (a malformed size, a bad pattern)."""


class ParserError(InternS1Error):
    """A streaming output parser used out of order (fed after it was finished)."""


class ChatTemplateError(InternS1Error):
    """A chat template that does not compile, or that fails or raises while rendering a conversation."""


class ContextFullError(InternS1Error):
    """The context's KV cache (one, shared by every sequence) has no room for the tokens to evaluate."""


class ImageError(InternS1Error):
    """An image that cannot be loaded: missing, not allowed, too large, not an image, corrupt, or a failed download."""


class VideoError(ImageError):
    """A video that cannot be used: not allowed, too large or too long, no video stream, corrupt, or undecodable."""


class RpcError(InternS1Error):
    """An RPC worker that cannot be used: unreachable, another protocol version, or lost while in use."""


class DepictionError(InternS1Error):
    """A string that cannot be drawn as a molecule: not SMILES that RDKit parses, empty, or too long."""


class DepictionUnavailable(InternS1Error):
    """Drawing molecules needs RDKit (the ``smiles`` extra), which is not installed."""
