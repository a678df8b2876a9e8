"""Where the CPU keeps the weights (issue 10): prompt and decode speed of each ``--cpu-buffers`` mode, and on which
batch sizes llama.cpp's AMX path crashes.

1. Speed: for Q4_0, Q4_K_M and Q8_0 files of the synthetic Intern-S1-mini, each mode (``extra``: llama.cpp's own
   choice, AMX included where it exists; ``repack``: AMX avoided, CPU_REPACK kept; ``plain``: use_extra_bufts off)
   loads in a child process and measures prompt tok/s (a 512-token batch, repeated) and decode tok/s (one-token
   steps); the modes take turns, round after round. A child that crashes is reported with its signal. Ratios are
   medians of per-round ratios against ``plain``.
2. ``--crash-matrix``: in mode ``extra``, one child per (file, batch size) evaluating one batch of that many tokens:
   ok or the signal that ended it. Run it with ``--size tiny`` and ``--size bench`` to see whether width matters.

    python bench/cpu_buffers.py                      # speed table (bench layout, ~1 GB BF16 checkpoint, cached)
    python bench/cpu_buffers.py --crash-matrix --size tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).parent))
from runtime import model_files, spread_tokens, time_prompt, time_steps  # noqa: E402  (the bench folder's shared parts)

MODES = ("extra", "repack", "plain")
TYPES = ("q4_0", "q4_k_m", "q8_0")
BATCHES = (1, 2, 3, 4, 8, 16, 32, 64, 128, 512)


def child(model: str, mode: str, batch: int, prompt_repeats: int, decode_tokens: int, threads: int) -> None:
    """Runs in the child process: load with ``mode``, time a ``batch``-token prompt and single-token decode steps."""
    from interns1_local.runtime.backend import Backend, LoadOptions

    backend = Backend(Path(model), LoadOptions(n_ctx=2048, n_threads=threads, cpu_buffers=mode))
    tokens = spread_tokens(batch)
    prompt = time_prompt(backend, tokens, prompt_repeats)
    steps = time_steps(backend, tokens, batch, decode_tokens)
    print(json.dumps({"placement": backend.placement.as_dict(),
                      "prompt_tps": batch / median(prompt) if prompt else None,
                      "decode_tps": 1 / median(steps) if steps else None}))
    backend.close()


def run_child(model: Path, mode: str, batch: int, prompt_repeats: int, decode_tokens: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(model), mode, str(batch), str(prompt_repeats), str(decode_tokens),
           str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode < 0:
        return {"crash": signal.Signals(-proc.returncode).name}
    if proc.returncode != 0:
        return {"crash": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def speed_table(size: str, threads: int, repeats: int, tokens: int, rounds: int) -> None:
    """Each round runs every mode once, in turn, so that load from other processes hits all modes alike; the
    ratios are medians of per-round ratios against plain."""
    print(f"{'type':8} {'mode':7} {'prompt tok/s':>13} {'decode tok/s':>13} {'prompt vs plain':>16} "
          f"{'decode vs plain':>16}  pinned")
    for out_type in TYPES:
        model, _ = model_files(size, out_type)
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(rounds):
            for mode in MODES:
                runs[mode].append(run_child(model, mode, 512, repeats, tokens, threads))
        for mode, rows in runs.items():
            if any("crash" in row for row in rows):
                print(f"{out_type:8} {mode:7} {'crashed: ' + next(r['crash'] for r in rows if 'crash' in r):>28}")
                continue
            ratio = {k: median(r[k] / p[k] for r, p in zip(rows, runs["plain"])) for k in ("prompt_tps", "decode_tps")}
            pinned = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in rows[0]["placement"]["pinned_bytes"].items())
            extra = "llama.cpp's choice" if mode == "extra" else (pinned or "-")
            print(f"{out_type:8} {mode:7} {median(r['prompt_tps'] for r in rows):13.1f} "
                  f"{median(r['decode_tps'] for r in rows):13.1f} {ratio['prompt_tps']:16.2f} "
                  f"{ratio['decode_tps']:16.2f}  {extra}")


def crash_matrix(size: str, threads: int) -> None:
    print(f"mode extra, one batch of N tokens; {size} layout")
    print(f"{'type':8} " + " ".join(f"{b:>7}" for b in BATCHES))
    for out_type in TYPES + ("q6_k", "q4_k_s", "iq4_xs", "f16"):
        model, _ = model_files(size, out_type)
        cells = []
        for batch in BATCHES:
            row = run_child(model, "extra", batch, 1, 0, threads)
            cells.append("ok" if "crash" not in row else row["crash"].replace("SIG", ""))
        print(f"{out_type:8} " + " ".join(f"{c:>7}" for c in cells))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, mode, batch, repeats, tokens, threads = sys.argv[2:8]
        child(model, mode, int(batch), int(repeats), int(tokens), int(threads))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "bench"), default="bench")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="prompt batches timed per child (median)")
    parser.add_argument("--tokens", type=int, default=32, help="decode steps timed per child (median)")
    parser.add_argument("--rounds", type=int, default=3, help="children per mode, interleaved with the others")
    parser.add_argument("--crash-matrix", action="store_true")
    args = parser.parse_args()
    print("$ python " + shlex.join(sys.argv))
    from interns1_local.runtime import ggml_c

    features = ggml_c.cpu_features()
    print("CPU:", _cpu_model(), "| ggml features:", " ".join(k for k, v in features.items() if v == "1"))
    if args.crash_matrix:
        crash_matrix(args.size, args.threads)
    else:
        speed_table(args.size, args.threads, args.repeats, args.tokens, args.rounds)


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
