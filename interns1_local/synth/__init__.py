"""Synthetic Intern-S1 checkpoints with the real layout: the tests' fixtures and the demo's embedded default."""

from .checkpoint import write_checkpoint
from .image import write_image
from .layout import MODELS, SynthSpec, get_spec, make_config, tensor_shapes
from .video import write_clip

__all__ = ["MODELS", "SynthSpec", "get_spec", "make_config", "tensor_shapes", "write_checkpoint", "write_clip",
           "write_image"]
