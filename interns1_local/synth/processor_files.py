"""The generation and processor configs of synthetic checkpoints, as the released Intern-S1 repos have them.

What the released files establish (SPEC 4, ``reference/intern-s1/README.md``): ``generation_config.json`` names only
the bos/eos ids (no sampling values: the runtime falls back to the model card's); the image processor is
GotOcr2's fast one with 448-pixel tiles, 1..12 of them; ``processor_config.json`` gives the tokens per tile; the video
processor has the image processor's keys plus its own type and remote-code class. transformers writes these files
with ``json.dumps(indent=2)`` and a final newline, the processor configs with sorted keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The transformers version the released checkpoints were saved with (their generation_config.json names it).
SAVED_WITH = "4.54.0.dev0"
PROCESSOR_CLASS = "InternS1Processor"

IMAGE_PROCESSOR: dict[str, Any] = {
    "crop_size": None, "crop_to_patches": False, "data_format": "channels_first", "default_to_square": True,
    "device": None, "disable_grouping": None, "do_center_crop": None, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "GotOcr2ImageProcessorFast", "image_std": [0.229, 0.224, 0.225],
    "input_data_format": None, "max_patches": 12, "min_patches": 1, "processor_class": PROCESSOR_CLASS,
    "resample": 3,  # bicubic
    "rescale_factor": 1 / 255, "return_tensors": None, "size": {"height": 448, "width": 448},
}
VIDEO_PROCESSOR: dict[str, Any] = IMAGE_PROCESSOR | {
    "video_processor_type": "InternS1VideoProcessor",
    "auto_map": {"AutoVideoProcessor": "video_processing_interns1.InternS1VideoProcessor"},
}


def _write(path: Path, data: dict[str, Any], sort_keys: bool) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def write_processor_files(out_dir: Path, config: dict[str, Any], added: dict[int, tuple[str, bool]]) -> None:
    """generation_config.json, preprocessor_config.json, video_preprocessor_config.json and processor_config.json.

    ``config`` is the checkpoint's config.json (tokens per image tile); ``added`` its added tokens (id -> (content,
    special)), where the bos and eos ids come from.
    """
    ids = {content: i for i, (content, _) in added.items()}
    _write(out_dir / "generation_config.json", {
        "_from_model_config": True, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "transformers_version": SAVED_WITH}, sort_keys=True)
    _write(out_dir / "preprocessor_config.json", IMAGE_PROCESSOR, sort_keys=True)
    _write(out_dir / "video_preprocessor_config.json", VIDEO_PROCESSOR, sort_keys=True)
    _write(out_dir / "processor_config.json", {
        "image_seq_length": config["image_seq_length"], "processor_class": PROCESSOR_CLASS,
        "auto_map": {"AutoProcessor": "processing_interns1.InternS1Processor"}}, sort_keys=False)
