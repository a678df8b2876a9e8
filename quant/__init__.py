"""Quantisation types and per-tensor type policy. Installed as ``interns1_local.quant``."""
