"""Checkpoint -> GGUF conversion (language model + mmproj). Installed as ``interns1_local.converters``."""
