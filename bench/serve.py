"""Server benchmark (issue 5): ``interns1 serve`` (continuous batching) against llama-cpp-python's own server
(``python -m llama_cpp.server``) on the same GGUF, with the same threads and context size, one after the other in
one run (never both at once: they would share the cores).

For 1, 4 and 8 concurrent clients, each sending ``--requests`` streaming chat completions back to back (a distinct
prompt each, thinking off, greedy, at most ``--max-tokens`` tokens): aggregate generated tokens/s (the phase's
completion tokens / its wall time, prompt processing included) and p50 / p95 time to the first content token of a
request (queueing included). Tokens: ``usage.completion_tokens`` at the end of the stream (``stream_options:
include_usage``; ours), else max_tokens where the stream ended by length (the reference: counting its chunks would
miss tokens it held back for a stop string). Each phase also prints the other processes' CPU load during it (from
/proc): the machine may be shared, and 2 cores leave no room. First, one untimed non-streaming request per server
pages the weights in; its prompt token count and reply are printed for both (same rendered prompt? same greedy
reply?), and after the phases, how many streamed replies are identical between the two servers.

Ours runs with ``--parallel 8``: every client decoded in one llama_decode per step. The reference serves one request
at a time by design; it gets ``--interrupt_requests false`` so the others wait on its lock (its default aborts the
running stream whenever another request arrives), and the settings that make it comparable: the same n_ctx
(ours shares it among its 8 sequences, the reference has it for its one), the same threads for prompt and decode,
flash attention on (ours: auto, which is on for CPU), logits for the last prompt token only (its server's default
``logits_all=True`` computes them for every prompt token) and the GGUF's template rendered with enable_thinking=False
(``--chat_template_kwargs``; ours gets ``enable_thinking: false`` in the body). Both get repeat_penalty 1.0 (the
reference's default is 1.1; ours has none on this route). Goal (issue 5): at 8 clients >= 2.5x the reference's
aggregate tokens/s and a lower p95 TTFT.

    python bench/serve.py                  # Intern-S1-mini 'bench' layout -> Q8_0 (~580 MB)
    python bench/serve.py --size tiny      # a quick run

Needs, besides the project: httpx, and llama-cpp-python's server extras (what ``llama-cpp-python[server]`` adds):
``pip install sse-starlette starlette-context pydantic-settings``. The GGUF is built and cached by bench/runtime.py's
``model_files`` (~/.cache/interns1-local/bench-runtime/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from statistics import quantiles
from typing import Any

import httpx
from runtime import model_files, text

MODEL_NAME = "intern-s1"
CLIENTS = (1, 4, 8)


@dataclass(frozen=True)
class Reply:
    label: str
    ttft: float  # seconds from sending the request to the first non-empty content delta
    tokens: int
    text: str
    finish: str


@dataclass(frozen=True)
class Phase:
    clients: int
    seconds: float
    replies: list[Reply]
    other_cpu_s: float  # CPU time of every process but the server and this client during the phase: other load

    def rate(self) -> float:
        return sum(r.tokens for r in self.replies) / self.seconds

    def ttft_ms(self) -> tuple[float, float]:
        """p50 and p95 (inclusive method: within the observed range even for a handful of requests)."""
        cuts = quantiles([r.ttft for r in self.replies], n=20, method="inclusive")
        return cuts[9] * 1e3, cuts[18] * 1e3


@dataclass(frozen=True)
class Run:
    warm_prompt_tokens: int
    warm_reply: str
    phases: list[Phase]


def same_text(a: str, b: str) -> bool:
    """Equal but for U+FFFD: a token that is not whole UTF-8 by itself (random weights produce many) is U+FFFD in our
    stream and dropped by llama-cpp-python's (it decodes with errors="ignore")."""
    return a.replace("\ufffd", "") == b.replace("\ufffd", "")


def other_cpu_seconds(server: int) -> float:
    """CPU seconds the machine has spent (/proc/stat, idle and iowait excluded) minus those of the server process
    and of this one (/proc/PID/stat, utime + stime, all threads)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    own = [Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13] for pid in (server, "self")]
    return (sum(ticks) - ticks[3] - ticks[4] - sum(int(t) for f in own for t in f)) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(label: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    """The same body for both servers; each ignores the fields it does not know."""
    question = f"Question {label}: what should the keeper write in the log tonight, and why?"
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": f"{text(label, 3)} {question}"}],
            "max_tokens": max_tokens, "temperature": 0, "seed": 1, "repeat_penalty": 1.0, "enable_thinking": False,
            "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}


@contextmanager
def serving(argv: list[str], url: str, ready_path: str, log: Path, timeout: float = 600) -> Iterator[int]:
    """Start a server, wait until ``ready_path`` answers 200, stop it afterwards; its output goes to ``log``."""
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}): {shlex.join(argv)}\n{log.read_text()}")
            with suppress(httpx.TransportError):
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer from {url}{ready_path} in {timeout:.0f} s:\n{log.read_text()}")
            time.sleep(0.25)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def stream_one(client: httpx.AsyncClient, url: str, label: str, max_tokens: int) -> Reply:
    """One streaming chat completion, SSE parsed here: ``data: {...}`` lines up to ``data: [DONE]``."""
    t0 = time.perf_counter()
    ttft, pieces, usage, finish = None, list[str](), None, ""
    async with client.stream("POST", url + "/v1/chat/completions", json=payload(label, max_tokens, True)) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{label}: HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')}")
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, ": ping" comments
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"{label}: error in the stream: {chunk['error']}")
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    pieces.append(piece)
                finish = choice.get("finish_reason") or finish
    if ttft is None:
        raise RuntimeError(f"{label}: the stream had no content (finish_reason {finish!r})")
    # without usage: a stream cut by max_tokens generated exactly that many; else count chunks (~ one per token)
    tokens = usage["completion_tokens"] if usage else max_tokens if finish == "length" else len(pieces)
    return Reply(label, ttft, tokens, "".join(pieces), finish)


async def phase(url: str, server: int, clients: int, requests: int, max_tokens: int) -> Phase:
    """``clients`` concurrent clients, each sending ``requests`` requests back to back."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(None)) as client:
        async def one_client(c: int) -> list[Reply]:
            return [await stream_one(client, url, f"{clients}.{c}.{k}", max_tokens) for k in range(requests)]

        cpu, t = other_cpu_seconds(server), time.perf_counter()
        per_client = await asyncio.gather(*(one_client(c) for c in range(clients)))
        seconds, cpu = time.perf_counter() - t, max(0.0, other_cpu_seconds(server) - cpu)  # +-1 tick of rounding
    return Phase(clients, seconds, [r for replies in per_client for r in replies], cpu)


def measure(name: str, argv: list[str], url: str, ready_path: str, args: argparse.Namespace, work: Path) -> Run:
    log = work / f"{name}.log"
    print(f"{name}: {shlex.join(argv)}", flush=True)
    with serving(argv, url, ready_path, log) as pid:
        warm = httpx.post(url + "/v1/chat/completions", json=payload("warm-up", args.max_tokens, False), timeout=None)
        if warm.status_code != 200:
            raise RuntimeError(f"{name}: warm-up: HTTP {warm.status_code}: {warm.text}\n{log.read_text()}")
        body = warm.json()
        phases = []
        for clients in CLIENTS:
            try:
                phases.append(asyncio.run(phase(url, pid, clients, args.requests, args.max_tokens)))
            except (RuntimeError, httpx.HTTPError) as exc:
                raise RuntimeError(f"{name}, {clients} clients: {exc!r}\nserver log:\n{log.read_text()}") from exc
            p = phases[-1]
            print(f"  {clients} clients: {len(p.replies)} replies, {sum(r.tokens for r in p.replies)} tokens in "
                  f"{p.seconds:.1f} s, finish reasons {sorted({r.finish for r in p.replies})}, other processes' load "
                  f"{p.other_cpu_s / p.seconds:.2f} cores", flush=True)
    return Run(body["usage"]["prompt_tokens"], body["choices"][0]["message"]["content"] or "", phases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "bench"), default="bench", help="synthetic Intern-S1-mini layout")
    parser.add_argument("--type", default="q8_0", help="the language model's GGUF type (default q8_0)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-ctx", type=int, default=8192, help="both servers (ours shares it among 8 sequences)")
    parser.add_argument("--requests", type=int, default=3, help="requests each client sends back to back")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    model, _ = model_files(args.size, args.type)
    threads, n_ctx = str(args.threads), str(args.n_ctx)
    print(f"model {model.name} ({model.stat().st_size / 1e6:.0f} MB), {threads} threads, n_ctx {n_ctx}, "
          f"{args.requests} requests per client, max_tokens {args.max_tokens}, greedy, thinking off", flush=True)
    url = f"http://127.0.0.1:{(port := free_port())}"
    ours_argv = [sys.executable, "-m", "interns1_local", "serve", str(model), "--port", str(port), "--model-name",
                 MODEL_NAME, "--parallel", str(max(CLIENTS)), "--ctx-size", n_ctx, "--threads", threads]
    ref_argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_NAME,
                "--port", str(port), "--n_ctx", n_ctx, "--n_threads", threads, "--n_threads_batch", threads,
                "--flash_attn", "true", "--logits_all", "false", "--interrupt_requests", "false", "--verbose", "false",
                "--chat_template_kwargs", json.dumps({"enable_thinking": False})]
    with tempfile.TemporaryDirectory(prefix="interns1-bench-serve-") as tmp:
        ours = measure("ours", ours_argv, url, "/health", args, Path(tmp))
        ref = measure("llama_cpp.server", ref_argv, url, "/v1/models", args, Path(tmp))

    print(f"\nwarm-up prompt tokens: ours {ours.warm_prompt_tokens}, llama_cpp.server {ref.warm_prompt_tokens}; "
          f"greedy replies {'identical' if same_text(ours.warm_reply, ref.warm_reply) else 'DIFFER'}")
    for name, run in (("ours", ours), ("llama_cpp.server", ref)):
        print(f"  {name:17} {run.warm_reply[:100]!r}")
    theirs = {r.label: r.text for p in ref.phases for r in p.replies}
    same = [f"{sum(same_text(r.text, theirs[r.label]) for r in p.replies)}/{len(p.replies)}" for p in ours.phases]
    print(f"streamed replies identical between the servers, at {'/'.join(map(str, CLIENTS))} clients: "
          f"{', '.join(same)}\n")
    print(f"{'clients':>7} {'ours tok/s':>10} {'ref tok/s':>10} {'ratio':>6}  {'ours TTFT p50/p95 ms':>21}  "
          f"{'ref TTFT p50/p95 ms':>21}")
    for a, b in zip(ours.phases, ref.phases, strict=True):
        (a50, a95), (b50, b95) = a.ttft_ms(), b.ttft_ms()
        print(f"{a.clients:>7} {a.rate():>10.1f} {b.rate():>10.1f} {a.rate() / b.rate():>6.2f}  "
              f"{f'{a50:.0f} / {a95:.0f}':>21}  {f'{b50:.0f} / {b95:.0f}':>21}")
    last_ours, last_ref = ours.phases[-1], ref.phases[-1]
    ratio, lower = last_ours.rate() / last_ref.rate(), last_ours.ttft_ms()[1] < last_ref.ttft_ms()[1]
    print(f"goal at {last_ours.clients} clients (>= 2.5x tok/s, lower p95 TTFT): ratio {ratio:.2f}, p95 TTFT "
          f"{'lower' if lower else 'NOT lower'} -> {'met' if ratio >= 2.5 and lower else 'NOT met'}")
    print(f"\ncommand: python bench/serve.py {shlex.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
