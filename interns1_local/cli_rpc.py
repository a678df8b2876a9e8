"""``interns1 rpc-worker``: serve this machine's CPU or GPU to an ``interns1 run/chat/serve --rpc`` head."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from .cli import app, err, handle_errors, out
from .errors import UsageError
from .fsutil import format_bytes


def _check_bindable(host: str, port: int) -> None:
    """llama.cpp only prints "Failed to create server socket" and returns; say why, before starting it."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@app.command("rpc-worker")
@handle_errors
def rpc_worker(
    host: Annotated[str, typer.Option(help="Address to listen on. The protocol has no authentication: anything but "
                                           "loopback exposes this machine's memory and compute to the network.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 50052,
    device: Annotated[str, typer.Option(help="The device to serve: CPU, CUDA0, Metal, Vulkan0, ...")] = "CPU",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (default: all cores).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Keep received weights here, so the next load sends only "
                                                    "hashes (llama.cpp's --cache).")] = None,
) -> None:
    """Serve this machine's memory and compute to another machine's `interns1 run/chat/serve --rpc HOST:PORT`
    (llama.cpp's RPC server; one client at a time). Ctrl-C stops it."""
    from .runtime import ggml_c, rpc

    if not rpc.supported():
        raise UsageError(rpc.HOW_TO_BUILD)
    found = [d for d in ggml_c.all_devices() if d.name == device]
    if not found:
        names = ", ".join(d.name for d in ggml_c.all_devices() if not d.name.startswith("RPC"))
        raise UsageError(f"no device {device!r} in this build; devices: {names}")
    _check_bindable(host, port)
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    if not rpc.is_loopback(host):
        err.print(f"warning: serving on {host}:{port}. llama.cpp's RPC protocol has no authentication and has had "
                  "remote-code-execution fixes: anyone who can reach this port can use this machine's memory and "
                  "compute, and read what it holds. Use it only on a trusted network (or a firewall that admits "
                  "the head alone).", style="bold yellow")
    dev = found[0]
    out.print(f"RPC worker on {host}:{port}: {dev.name} ({dev.description}), {format_bytes(dev.free)} free of "
              f"{format_bytes(dev.total)}; cache {cache or 'off'}; Ctrl-C stops it", highlight=False)
    worker = threading.Thread(target=rpc.serve, args=(host, port, device, threads or os.cpu_count() or 1,
                                                      str(cache) if cache else None), daemon=True)
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background, where SIGINT is ignored
        signal.signal(sig, signal.default_int_handler)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.5)
    except KeyboardInterrupt:
        err.print("stopped")
        sys.stdout.flush()
        os._exit(0)  # the server thread is blocked inside llama.cpp's accept/recv; nothing of ours is unwritten
    raise UsageError(f"llama.cpp's RPC server on {host}:{port} stopped (see its message above)")
