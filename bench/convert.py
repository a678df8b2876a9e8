"""Conversion benchmark: wall time, MB/s and peak RSS of ``interns1 convert``, and for the MoE layout the same for
llama.cpp's own two-step path, measured in the same run.

    python bench/convert.py                 # Intern-S1-mini layout, >= 1 GB checkpoint -> Q8_0
    python bench/convert.py --moe           # Intern-S1's MoE shapes (~12 GB) -> Q4_K_M, vs llama.cpp's way

Goal (mini): peak RSS under twice the largest single tensor (at F32, the converter's working precision) + 300 MB.
Goal (--moe): at least 2x faster end to end, at most half the peak RSS, no intermediate file, identical tensors.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from measure import run_python

from interns1_local.converters.checkpoint import open_checkpoint
from interns1_local.gguf_header import tensor_digests
from interns1_local.synth import write_checkpoint


def raw_read_seconds(ckpt: Path) -> float:
    """Reading every shard byte once: the floor for any converter on this disk (page cache included)."""
    t = time.perf_counter()
    for shard in sorted(ckpt.glob("model-*.safetensors")):
        with shard.open("rb", buffering=0) as f:
            while f.read(16 * 2**20):
                pass
    return time.perf_counter() - t


def ours(ckpt: Path, out: Path, out_type: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    run = run_python("module", "interns1_local", "convert", str(ckpt), "-o", str(out), "--type", out_type, "-q")
    written = sum(p.stat().st_size for p in out.glob("*.gguf"))
    return {"wall_s": round(run.wall_s, 2), "peak_rss_MB": round(run.peak_rss / 1e6, 1),
            "written_MB": round(written / 1e6, 1), "intermediate_MB": 0.0}


def bench_mini(args: argparse.Namespace, work: Path) -> dict:
    ckpt = work / "Intern-S1-mini-bench"
    if not (ckpt / "model.safetensors.index.json").is_file():
        write_checkpoint(ckpt, model="mini", size="bench")
    tensors = open_checkpoint(ckpt).tensors
    ckpt_bytes = sum(t.nbytes for t in tensors.values())
    largest = max(tensors.values(), key=lambda t: t.nbytes)
    largest_f32 = math.prod(largest.shape) * 4
    raw = raw_read_seconds(ckpt)
    result = ours(ckpt, work / "out", args.type)
    goal = 2 * largest_f32 + 300e6
    return {
        "command": f"python bench/convert.py --type {args.type}",
        "checkpoint_MB": round(ckpt_bytes / 1e6, 1), **result,
        "read_MB_per_s": round(ckpt_bytes / 1e6 / result["wall_s"], 1),
        "raw_read_MB_per_s": round(ckpt_bytes / 1e6 / raw, 1),
        "largest_tensor": f"{largest.name} {list(largest.shape)} {largest.dtype}",
        "largest_tensor_MB_f32": round(largest_f32 / 1e6, 1),
        "goal_peak_rss_MB": round(goal / 1e6, 1),
        "peak_rss_over_largest_f32": round(result["peak_rss_MB"] * 1e6 / largest_f32, 2),
        "goal_met": result["peak_rss_MB"] * 1e6 < goal,
    }


def bench_moe(args: argparse.Namespace, work: Path) -> dict:
    from gguf import LlamaFileType
    from llama_cpp_way import QUANTIZE, checkpoint_for_llama_cpp, llama_cpp_sources

    ckpt = work / "Intern-S1-bench"
    if not (ckpt / "model.safetensors.index.json").is_file():
        t = time.perf_counter()
        write_checkpoint(ckpt, model="s1", size="bench")
        print(f"synthetic checkpoint written in {time.perf_counter() - t:.0f} s")
    ckpt_bytes = sum(t.nbytes for t in open_checkpoint(ckpt).tensors.values())
    mine = ours(ckpt, work / "ours", args.type)
    src = llama_cpp_sources()
    bf16 = work / "llama.cpp" / "model-BF16.gguf"
    bf16.parent.mkdir(exist_ok=True)
    step1 = run_python("script", str(src / "convert_hf_to_gguf.py"), str(checkpoint_for_llama_cpp(ckpt, work)),
                       "--outtype", "bf16", "--outfile", str(bf16))
    final = work / "llama.cpp" / f"model-{args.type.upper()}.gguf"
    ftype = LlamaFileType[f"MOSTLY_{args.type.upper()}"]
    step2 = run_python("code", QUANTIZE, str(bf16), str(final), str(int(ftype)))
    theirs = {"wall_s": round(step1.wall_s + step2.wall_s, 2),
              "peak_rss_MB": round(max(step1.peak_rss, step2.peak_rss) / 1e6, 1),
              "convert_wall_s": round(step1.wall_s, 2), "quantize_wall_s": round(step2.wall_s, 2),
              "written_MB": round((bf16.stat().st_size + final.stat().st_size) / 1e6, 1),
              "intermediate_MB": round(bf16.stat().st_size / 1e6, 1)}
    a = tensor_digests(next((work / "ours").glob(f"*-{args.type.upper()}.gguf")))
    b = tensor_digests(final)
    return {
        "command": f"python bench/convert.py --moe --type {args.type}",
        "checkpoint_MB": round(ckpt_bytes / 1e6, 1), "ours": mine, "llama_cpp": theirs,
        "speedup": round(theirs["wall_s"] / mine["wall_s"], 2),
        "peak_rss_ratio": round(mine["peak_rss_MB"] / theirs["peak_rss_MB"], 3),
        "tensors_identical": a.keys() == b.keys() and all(a[n] == b[n] for n in a),
        "tensors_differing": [n for n in a if n in b and a[n] != b[n]][:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moe", action="store_true", help="Intern-S1's MoE shapes vs llama.cpp's way")
    parser.add_argument("--type", default=None, help="output type (default q8_0, or q4_k_m with --moe)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the checkpoint and outputs here")
    args = parser.parse_args()
    args.type = args.type or ("q4_k_m" if args.moe else "q8_0")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="interns1-bench-"))
    try:
        report = (bench_moe if args.moe else bench_mini)(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
