"""`interns1 serve` as a real process on a free loopback port, for the server tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(model_dir: Path, *args: str, timeout: float = 120,
            launcher: tuple[str, ...] = ("-m", "interns1_local")) -> Iterator[str]:
    """Start the server, wait for /health, yield its base URL, stop it (and show its log if it died). ``launcher``:
    what follows the Python interpreter on the command line, up to the ``serve`` command."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, *launcher, "serve", str(model_dir), "--port", str(port),
                             "--threads", "2", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}):\n{proc.stdout.read()}")
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.returncode not in (0, -15):
            print(proc.stdout.read())
