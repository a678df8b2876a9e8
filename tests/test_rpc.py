"""Several machines through llama.cpp's RPC backend, all on loopback: real `interns1 rpc-worker` processes, the model
split across them and the local CPU, compared with the same model in one process (F32 weights, F32 KV cache)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from llama_helpers import llama_log, step_logits
from serve_fixture import free_port, serving

from interns1_local.runtime import ggml_c, rpc
from interns1_local.runtime.backend import Backend, LoadOptions
from interns1_local.runtime.engine import Engine, Finished, Sampling
from interns1_local.synth import write_image

# CI builds llama-cpp-python with RPC and checks it before the tests (.ci/run), so there this never skips.
pytestmark = pytest.mark.skipif(not rpc.supported(), reason=rpc.HOW_TO_BUILD)
CLI = [sys.executable, "-c", "from interns1_local.cli import main; main()"]
PROMPT = "Explain how a lighthouse lens concentrates the light of a small lamp into a beam"


@contextmanager
def worker(port: int | None = None):
    """One `interns1 rpc-worker` on loopback; yields its endpoint once it answers the protocol's HELLO."""
    port = port or free_port()
    proc = subprocess.Popen([*CLI, "rpc-worker", "--port", str(port), "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    endpoint = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"rpc-worker exited ({proc.returncode}): {proc.stdout.read()}")
            try:
                rpc.probe(endpoint, timeout=2)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield endpoint, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: it must stop by itself
            try:
                assert proc.wait(timeout=20) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()


@pytest.fixture(scope="module")
def workers():
    with worker() as (a, _), worker() as (b, _):
        yield [a, b]


@pytest.fixture(scope="module")
def moe(checkpoint, convert_once):
    return convert_once(checkpoint("s1"), "f32", "f32").model.path


def _logits(path: Path, options: LoadOptions, steps: int = 8):
    """Greedy logits after the prompt and each next token, llama.cpp's load log, and the layer plan."""
    with llama_log() as log, Backend(path, options) as backend:
        rows, tokens = step_logits(backend, PROMPT, steps=steps)
        return rows, tokens, log, backend.layers


def test_moe_split_across_two_workers_equals_one_process(moe, workers) -> None:
    local = LoadOptions(n_ctx=256, n_threads=2, type_k="f32", type_v="f32")
    ref, ref_tokens, _, _ = _logits(moe, local)
    split = LoadOptions(n_ctx=256, n_threads=2, type_k="f32", type_v="f32", gpu_layers=2, rpc=tuple(workers),
                        tensor_split=(1, 1))
    ours, tokens, log, layers = _logits(moe, split)
    rel = float(np.abs(ours - ref).max() / ref.std())
    print(f"MoE over RPC vs one process: max|diff|/std {rel:.2e}; {layers}")
    assert tokens == ref_tokens and rel < 1e-5
    # layer 0 stays here, layer 1 goes to the first worker, the output layer to the second (llama.cpp's own log)
    assert layers == ["CPU", "RPC0", "RPC1"]
    text = "".join(log)  # llama.cpp logs a line in several pieces
    for w in workers:
        sizes = re.findall(rf"RPC\d+\[{re.escape(w)}\] model buffer size =\s+([\d.]+) MiB", text)
        assert sizes and float(sizes[0]) > 0, (w, text[-3000:])
    # closed: the workers' devices are out of ggml's registry, so a later load in this process cannot reach them
    assert not [d.name for d in ggml_c.all_devices() if d.name.startswith("RPC")]


def test_an_image_turn_keeps_the_projector_local(converted, workers, tmp_path) -> None:
    files = converted("f32", "f32")
    image = str(write_image(tmp_path / "grad.png"))
    messages = [{"role": "user", "content": [{"type": "image", "url": image}, {"type": "text", "text": "What is it?"}]}]

    def answer(**rpc_options) -> str:
        engine = Engine(files.model.path, LoadOptions(mmproj=files.mmproj.path, n_ctx=1024, n_threads=2,
                                                      type_k="f32", type_v="f32", **rpc_options))
        try:
            with engine.conversation() as conv:
                events = list(conv.generate(messages, thinking=False, sampling=Sampling(temperature=0, max_tokens=12)))
            assert isinstance(events[-1], Finished)
            return "".join(getattr(e, "text", "") for e in events[:-1])
        finally:
            engine.close()

    assert answer(gpu_layers=-1, rpc=tuple(workers), tensor_split=(1, 1)) == answer()


def test_serve_with_two_parallel_streams(converted, workers) -> None:
    model_dir = converted("f32", "f32").model.path.parent

    def two_streams(url: str) -> list[str]:
        def one(prompt: str) -> str:
            body = {"model": "intern-s1", "messages": [{"role": "user", "content": prompt}], "max_tokens": 16,
                    "temperature": 0, "enable_thinking": False}
            reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
            assert reply.status_code == 200, reply.text
            return reply.json()["choices"][0]["message"]["content"]
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(one, ["Name a noble gas.", "What is the speed of light?"]))

    common = ("--parallel", "2", "--ctx-size", "1024", "--cache-type-k", "f32", "--cache-type-v", "f32")
    with serving(model_dir, *common, "--rpc", ",".join(workers), "--gpu-layers", "all", "--tensor-split", "1,1") as url:
        remote = two_streams(url)
    with serving(model_dir, *common) as url:
        local = two_streams(url)
    assert remote == local


def test_a_stopped_worker_is_a_clear_error(converted) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    proc = subprocess.run([*CLI, "run", str(converted("f32", "f32").model.path), "hi", "--rpc", endpoint],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and endpoint in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_worker_killed_mid_stream_ends_the_client_clearly(converted) -> None:
    """The reply runs long (greedy on random weights, no end token for 1500+ tokens: the chat test relies on it);
    the worker holding every layer is killed after the first words; the client must end, with the reason."""
    model = str(converted("f32", "f32").model.path)
    with worker() as (endpoint, proc):
        client = subprocess.Popen([*CLI, "run", model, "Tell me a long story.", "--no-think", "--temperature", "0",
                                   "--max-tokens", "100000", "--rpc", endpoint, "--gpu-layers", "all"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            first = client.stdout.read(16)  # the answer has started
            assert first, client.stderr.read().decode()
            os.killpg(proc.pid, signal.SIGKILL)
            rc = client.wait(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
        stderr = client.stderr.read().decode()
        assert rc == 1 and "RPC worker stopped answering" in stderr and "Traceback" not in stderr, (rc, stderr)


def test_doctor_probes_the_workers(workers) -> None:
    down = f"127.0.0.1:{free_port()}"
    proc = subprocess.run([*CLI, "doctor", "--json", "--rpc", ",".join([*workers, down])], capture_output=True,
                          text=True, timeout=120)
    report = json.loads(proc.stdout)
    assert report["llama.cpp"]["rpc"] is True
    for w in workers:
        assert report["rpc_workers"][w]["reachable"] and report["rpc_workers"][w]["devices"][0]["total_bytes"] > 0
    assert report["rpc_workers"][down]["reachable"] is False and proc.returncode == 1  # one is down: say so


def test_a_worker_killed_under_the_server_fails_requests_not_the_server(converted) -> None:
    """The running stream ends with an error event; the server stays up and says, with 503s and /health, that it
    must be restarted (it cannot answer without the lost layers)."""
    model_dir = converted("f32", "f32").model.path.parent
    with (worker() as (endpoint, proc),
          serving(model_dir, "--rpc", endpoint, "--gpu-layers", "all", "--ctx-size", "4096") as url):
        body = {"model": "intern-s1", "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": 3000, "temperature": 0, "enable_thinking": False, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as reply:
            assert reply.status_code == 200, reply.read()
            lines = reply.iter_lines()
            assert any('"content"' in line for line in lines)  # the answer has started
            os.killpg(proc.pid, signal.SIGKILL)
            rest = list(lines)  # ends: bounded by the client's timeout
        assert any('"error"' in line and "RPC worker" in line for line in rest), rest[-3:]
        again = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False}, timeout=60)
        assert again.status_code == 503 and "restart" in again.text
        health = httpx.get(url + "/health", timeout=10)
        assert health.status_code == 503 and "restart" in health.text
