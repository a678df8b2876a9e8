"""Several machines (issue 13): the cost of llama.cpp's RPC protocol itself, on loopback (no network cost).

The bench Intern-S1-mini (Q8_0) runs in one process, then with every layer on two `interns1 rpc-worker` processes on
127.0.0.1 (``--tensor-split 1,1``). Both: prompt tok/s (a 512-token batch) and decode tok/s (one-token steps), medians
of ``--repeats``. Bytes per token: each worker's socket traffic during the decode steps, read from
/proc/PID/io (rchar/wchar: every byte its read/write calls moved; a worker does no other I/O then), divided by the
steps. README turns that into seconds per token on 1 GbE and 10 GbE.

    python bench/rpc.py            # needs llama-cpp-python built with -DGGML_RPC=on
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from runtime import model_files, spread_tokens, time_prompt, time_steps  # noqa: E402
from serve_fixture import free_port  # noqa: E402

from interns1_local.runtime import rpc  # noqa: E402
from interns1_local.runtime.backend import Backend, LoadOptions  # noqa: E402


def start_worker(threads: int) -> tuple[str, subprocess.Popen]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from interns1_local.cli import main; main()", "rpc-worker",
                             "--port", str(port), "--threads", str(threads)], stdout=subprocess.DEVNULL,
                            start_new_session=True)
    endpoint = f"127.0.0.1:{port}"
    for _ in range(300):
        try:
            rpc.probe(endpoint, timeout=2)
            return endpoint, proc
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    raise RuntimeError("worker did not start")


def socket_bytes(endpoints: list[str]) -> int:
    """Bytes the workers' established connections sent and received so far: the kernel's TCP counters (TCP_INFO's
    bytes_acked and bytes_received, as ``ss -ti`` prints them) of each worker's listening port."""
    total = 0
    for endpoint in endpoints:
        port = endpoint.rsplit(":", 1)[1]
        out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"], capture_output=True,
                             text=True, check=True).stdout
        total += sum(int(v) for v in re.findall(r"bytes_(?:acked|received):(\d+)", out))
    return total


def measure(model: Path, options: LoadOptions, repeats: int, steps: int) -> dict[str, float]:
    backend = Backend(model, options)
    try:
        tokens = spread_tokens(512)
        prompt = time_prompt(backend, tokens, repeats)
        before = socket_bytes(list(options.rpc))
        times = time_steps(backend, tokens, 512, steps)
        moved = socket_bytes(list(options.rpc)) - before
        return {"prompt": 512 / median(prompt), "decode": 1 / median(times), "bytes_per_token": moved / steps}
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "bench"), default="bench")
    parser.add_argument("--type", default="q8_0")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print("$ python " + shlex.join(sys.argv))
    if not rpc.supported():
        sys.exit(rpc.HOW_TO_BUILD)
    model, _ = model_files(args.size, args.type)
    base = dict(n_ctx=1024, n_threads=args.threads)
    local = measure(model, LoadOptions(**base), args.repeats, args.steps)
    # each worker gets every core: llama.cpp runs the layers in order, so one device computes at a time
    workers = [start_worker(args.threads) for _ in range(2)]
    try:
        remote = measure(model, LoadOptions(**base, gpu_layers=-1, rpc=tuple(e for e, _ in workers),
                                            tensor_split=(1, 1)), args.repeats, args.steps)
    finally:
        for _, proc in workers:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=30)
    print(f"{'':28} {'local':>10} {'2 workers':>10} {'ratio':>7}")
    for key, label in (("prompt", "prompt tok/s (512 batch)"), ("decode", "decode tok/s")):
        print(f"{label:28} {local[key]:10.1f} {remote[key]:10.1f} {remote[key] / local[key]:7.2f}")
    print(f"{'bytes per decoded token':28} {'':>10} {remote['bytes_per_token']:10.0f}")


if __name__ == "__main__":
    main()
