"""Synthetic Intern-S1 checkpoints with the real layout: the tests' fixtures and the demo's embedded default."""

from .checkpoint import PRESETS, SynthSpec, make_config, tensor_shapes, write_checkpoint

__all__ = ["PRESETS", "SynthSpec", "make_config", "tensor_shapes", "write_checkpoint"]
