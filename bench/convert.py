"""Conversion benchmark: a >= 1 GB synthetic checkpoint -> GGUF, with wall time, MB/s and peak RSS.

    python bench/convert.py [--type q8_0] [--workdir DIR] [--keep]

The conversion runs in a child process that reports its own peak RSS (VmHWM from /proc/self/status: a fresh
address space after exec; ru_maxrss of a forked child would also count the parent's memory before exec). The goal:
under twice the largest single tensor (at F32, the converter's working precision) plus 300 MB.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys, time
from pathlib import Path
from interns1_local.converters.convert import ConvertOptions, convert
r = convert(Path(sys.argv[1]), Path(sys.argv[2]), ConvertOptions(out_type=sys.argv[3]))
hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(r.model.tensor_bytes + r.mmproj.tensor_bytes, r.seconds, hwm)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type", default="q8_0")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    args = parser.parse_args()

    from interns1_local.converters.checkpoint import open_checkpoint
    from interns1_local.synth import write_checkpoint

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="interns1-bench-"))
    ckpt = workdir / "Intern-S1-mini-bench"
    if not (ckpt / "model.safetensors.index.json").is_file():
        t = time.perf_counter()
        write_checkpoint(ckpt, model="mini", size="bench")
        print(f"wrote the synthetic checkpoint in {time.perf_counter() - t:.1f} s")
    tensors = open_checkpoint(ckpt).tensors
    ckpt_bytes = sum(t.nbytes for t in tensors.values())
    largest = max(tensors.values(), key=lambda t: t.nbytes)
    largest_f32 = math.prod(largest.shape) * 4

    # Reference in the same run: reading every shard byte once, the floor for any converter on this disk.
    t = time.perf_counter()
    for shard in sorted(ckpt.glob("model-*.safetensors")):
        with shard.open("rb", buffering=0) as f:
            while f.read(16 * 2**20):
                pass
    raw_read_s = time.perf_counter() - t
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(workdir / "out"), args.type],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    written, _, peak_s = done.stdout.split()
    peak = int(peak_s)
    goal = 2 * largest_f32 + 300 * 2**20
    report = {
        "command": f"python bench/convert.py --type {args.type}",
        "checkpoint_MB": round(ckpt_bytes / 1e6, 1),
        "written_MB": round(int(written) / 1e6, 1),
        "wall_s": round(wall, 2),
        "read_MB_per_s": round(ckpt_bytes / 1e6 / wall, 1),
        "raw_read_MB_per_s": round(ckpt_bytes / 1e6 / raw_read_s, 1),
        "wall_over_raw_read": round(wall / raw_read_s, 2),
        "peak_rss_MB": round(peak / 1e6, 1),
        "largest_tensor": f"{largest.name} {list(largest.shape)} {largest.dtype}",
        "largest_tensor_MB_bf16": round(largest.nbytes / 1e6, 1),
        "largest_tensor_MB_f32": round(largest_f32 / 1e6, 1),
        "goal_peak_rss_MB": round(goal / 1e6, 1),
        "peak_rss_over_largest_f32": round(peak / largest_f32, 2),
        "goal_met": peak < goal,
    }
    print(json.dumps(report, indent=2))
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
