"""A bad file to every command: each (file, command) cell of the table runs the real ``interns1`` command in a
subprocess and must end with exit code 2 and one line on stderr, no traceback; where a command legitimately takes
the file (``inspect`` shows any GGUF), the table says so and the cell must succeed.

Every bad file fails before a model is loaded, so the cells are quick; they run in a few threads.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from interns1_local.converters.gguf_out import NoProgress, write_gguf

_SCRIPT = Path(sys.executable).with_name("interns1")
CLI = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "interns1_local"]
COMMANDS = ("run", "chat", "serve", "tokenize", "inspect", "quantize")
OK = "ok"

# file -> command -> OK, or a fragment the one-line error must contain. "model GGUF" is a good model where the
# projector belongs (--mmproj) for the commands that load one, and a good input for the others.
TABLE: dict[str, dict[str, str]] = {
    "model GGUF": {"run": "not a vision projector (mmproj)", "chat": "not a vision projector (mmproj)",
                   "serve": "not a vision projector (mmproj)", "tokenize": OK, "inspect": OK, "quantize": OK},
    "mmproj": dict.fromkeys(("run", "chat", "serve", "tokenize", "quantize"), "vision projector (mmproj)")
    | {"inspect": OK},
    "truncated": dict.fromkeys(("run", "chat", "serve", "tokenize", "quantize"), "truncated")
    | {"inspect": OK},  # the header is whole: inspect shows it
    "random bytes": dict.fromkeys(COMMANDS, "not a readable GGUF file"),
    "directory": dict.fromkeys(("run", "chat", "serve", "tokenize"), "expected one model GGUF in the directory")
    | {"inspect": "is a directory", "quantize": "is a directory"},
    "missing": dict.fromkeys(COMMANDS, "no such file"),
    "wrong arch": dict.fromkeys(("run", "chat", "serve", "tokenize", "quantize"), "architecture 'gpt2'")
    | {"inspect": OK},
    "no token list": dict.fromkeys(("run", "chat", "serve", "tokenize", "quantize"), "tokenizer.ggml.tokens")
    | {"inspect": OK},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(command: str, file: Path, model: Path, work: Path, image: Path) -> list[str]:
    """The command line of one cell; the "model GGUF" row passes the model as the projector too."""
    projector = ["--mmproj", str(model)] if file == model else []
    small = ["--ctx-size", "256", "--gpu-layers", "0"]
    return {
        "run": ["run", str(file), "hi", "--max-tokens", "1", *small, *projector,
                *(["--image", str(image)] if projector else [])],
        "chat": ["chat", str(file), *small, *projector],
        "serve": ["serve", str(file), "--port", str(_free_port()), *small, *projector],
        "tokenize": ["tokenize", str(file), "hi"],
        "inspect": ["inspect", str(file)],
        "quantize": ["quantize", str(file), str(work / f"{file.name}.q8_0.gguf"), "--type", "q8_0"],
    }[command]


@pytest.fixture(scope="module")
def bad_files(converted, tmp_path_factory) -> dict[str, Path]:
    out = converted("f32", "f16")
    model, mmproj = out.model.path, out.mmproj.path
    d = tmp_path_factory.mktemp("bad-files")
    truncated = d / "truncated.gguf"
    with model.open("rb") as src, truncated.open("wb") as dst:
        dst.write(src.read(model.stat().st_size // 2))  # the header whole, half the tensor data gone
    noise = d / "noise.gguf"
    noise.write_bytes(os.urandom(4096))
    (d / "empty-dir").mkdir()
    # header-only files (no tensors): each fails on its metadata, before a tensor would matter
    write_gguf(d / "gpt2.gguf", "gpt2", out.model.kvs, [], NoProgress())
    write_gguf(d / "no-tokens.gguf", out.model.arch, [kv for kv in out.model.kvs if kv.key != "tokenizer.ggml.tokens"],
               [], NoProgress())
    from interns1_local.synth import write_image

    write_image(d / "img.png")
    return {"model GGUF": model, "mmproj": mmproj, "truncated": truncated, "random bytes": noise,
            "directory": d / "empty-dir", "missing": d / "missing.gguf", "wrong arch": d / "gpt2.gguf",
            "no token list": d / "no-tokens.gguf", "_work": d, "_image": d / "img.png", "_model": model}


def _run_cell(file: Path, command: str, files: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    work = files["_work"] / f"out-{command}-{file.name}"
    work.mkdir(exist_ok=True)
    return subprocess.run([*CLI, *_args(command, file, files["_model"], work, files["_image"])],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, "COLUMNS": "400", "INTERNS1_DEBUG": ""})


def test_bad_file_to_every_command(bad_files) -> None:
    cells = [(name, command) for name, row in TABLE.items() for command in row]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: _run_cell(bad_files[c[0]], c[1], bad_files), cells))
    wrong = []
    for (name, command), result in zip(cells, results):
        want = TABLE[name][command]
        message = result.stderr.strip()
        if want == OK:
            if result.returncode != 0:
                wrong.append(f"{name} / {command}: exit {result.returncode}, expected success: {message[-300:]}")
        elif (result.returncode != 2 or "\n" in message or not message.startswith("error:") or want not in message
              or "Traceback" in result.stderr):
            wrong.append(f"{name} / {command}: exit {result.returncode}, expected 2 and one line with {want!r}: "
                         f"{message[-300:]!r}")
    assert not wrong, "\n".join(wrong)
