"""The synthetic checkpoint has Intern-S1-mini's real layout and gives non-degenerate activations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from interns1_local.converters.safetensors_io import read_header
from interns1_local.errors import OutputError
from interns1_local.synth import write_checkpoint
from interns1_local.synth.tokenizer_files import DOMAINS


def test_config_has_intern_s1_keys(mini_ckpt: Path) -> None:
    cfg = json.loads((mini_ckpt / "config.json").read_text())
    assert cfg["architectures"] == ["InternS1ForConditionalGeneration"]
    assert cfg["model_type"] == "interns1"
    assert cfg["text_config"]["architectures"] == ["Qwen3ForCausalLM"]
    assert cfg["text_config"]["vocab_size"] == 153216
    assert cfg["vision_config"]["image_size"] == [448, 448] and cfg["vision_config"]["patch_size"] == [14, 14]
    assert cfg["downsample_ratio"] == 0.5 and cfg["projector_hidden_act"] == "gelu"
    for key in ("image_token_id", "image_seq_length"):
        assert key in cfg


def test_sharded_bf16_with_index(mini_ckpt: Path) -> None:
    index = json.loads((mini_ckpt / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    dtypes = set()
    for shard in shards:
        header = read_header(mini_ckpt / shard)
        assert {n for n, s in index["weight_map"].items() if s == shard} == set(header)
        dtypes |= {t.dtype for t in header.values()}
    assert dtypes == {"BF16"}
    assert index["metadata"]["total_size"] == sum(t.nbytes for s in shards for t in read_header(mini_ckpt / s).values())


def test_state_dict_names_are_the_reference_models(reference, mini_ckpt: Path) -> None:
    """load_reference uses strict=True; here also check the checkpoint holds exactly the model's parameters."""
    index = json.loads((mini_ckpt / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(reference.state_dict())


def test_tokenizer_files(mini_ckpt: Path) -> None:
    vocab = json.loads((mini_ckpt / "vocab.json").read_text())
    assert len(vocab) == 151643 and vocab["Ġthe"] == 279  # Qwen's real ranks
    merges = (mini_ckpt / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version") and len(merges) - 1 == 151643 - 256
    added = json.loads((mini_ckpt / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    by_content = {v["content"]: int(k) for k, v in added.items()}
    assert by_content["<|im_end|>"] == 151645 and by_content["<think>"] == 151667
    assert by_content["<SMILES>"] == 151925 and by_content["<IMG_CONTEXT>"] == 152957
    template = (mini_ckpt / "chat_template.jinja").read_text()
    assert "enable_thinking" in template and "<|action_start|><|plugin|>" in template
    for domain, start, size, tags in DOMAINS:
        sp = spm.SentencePieceProcessor(model_file=str(mini_ckpt / f"tokenizer_{domain}.model"))
        assert 32 < sp.get_piece_size() <= size, domain
        assert by_content[tags[0]] == start + size  # the tags follow the piece range


RELEASED = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "intern-s1"
# Ids the released files and SPEC 4-5 establish: Qwen's special tokens, <IMG_CONTEXT>, and the domain tags right after
# their piece ranges (SMILES 151669 + 256, IUPAC 151929 + 512, FASTA 152443 + 512 ending where <IMG_CONTEXT> starts).
RELEASED_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<think>": 151667,
                "</think>": 151668, "<SMILES>": 151925, "</SMILES>": 151926, "<SELFIES>": 151927, "</SELFIES>": 151928,
                "<IUPAC>": 152441, "</IUPAC>": 152442, "<FASTA>": 152955, "</FASTA>": 152956, "<IMG_CONTEXT>": 152957}
DOMAIN_TAGS = [t for *_, tags in DOMAINS for t in tags]


@pytest.mark.parametrize("ckpt", ["mini", "s1"])
def test_non_weight_files_are_the_released_ones(checkpoint, ckpt) -> None:
    path = checkpoint(ckpt)
    for name in ("generation_config.json", "preprocessor_config.json", "processor_config.json"):
        assert (path / name).read_text() == (RELEASED / name).read_text(), name
    image = json.loads((RELEASED / "preprocessor_config.json").read_text())
    video = json.loads((path / "video_preprocessor_config.json").read_text())
    assert {k: video.pop(k) for k in ("video_processor_type", "auto_map")} == {
        "video_processor_type": "InternS1VideoProcessor",
        "auto_map": {"AutoVideoProcessor": "video_processing_interns1.InternS1VideoProcessor"}}
    assert video == image
    added = json.loads((path / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    by_content = {v["content"]: (int(k), v["special"]) for k, v in added.items()}
    assert "<MOLFORMULA>" not in by_content and "</MOLFORMULA>" not in by_content
    assert {t: by_content[t][0] for t in RELEASED_IDS} == RELEASED_IDS
    assert all(by_content[t][1] for t in DOMAIN_TAGS)


def test_activations_are_not_degenerate(reference) -> None:
    ids = torch.tensor([[9707, 11, 1879, 0, 220, 151644, 872, 198, 109539]])
    with torch.no_grad():
        logits = reference(input_ids=ids).logits[0]
    assert logits.std() > 1.0  # spread logits: a wrong norm or tensor changes them measurably
    probs = torch.softmax(logits, -1)
    assert probs.max(-1).values.mean() < 0.9  # not collapsed onto one token
    assert len(set(logits.argmax(-1).tolist())) > 3


def test_refuses_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(OutputError, match="not empty"):
        write_checkpoint(tmp_path)
    assert (tmp_path / "x").read_text() == "keep me"


def test_weights_are_deterministic() -> None:
    from interns1_local.synth.checkpoint import init_tensor

    a = init_tensor("model.language_model.layers.0.mlp.up_proj.weight", (8, 16), 0)
    assert np.array_equal(a, init_tensor("model.language_model.layers.0.mlp.up_proj.weight", (8, 16), 0))
    assert not np.array_equal(a, init_tensor("model.language_model.layers.0.mlp.up_proj.weight", (8, 16), 1))
