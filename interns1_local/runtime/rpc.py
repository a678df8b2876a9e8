"""Several machines through llama.cpp's RPC backend (SPEC 12): a worker serves its device's memory and compute, the
head adds workers as devices and llama.cpp places layers on them; per token only activations cross the network.

llama.cpp aborts the whole process when a worker is unreachable or stops answering, so every endpoint is probed here
first (a TCP connection and the protocol's HELLO, DEVICE_COUNT and GET_DEVICE_MEMORY commands, written from the wire
format in ggml-rpc.cpp), and a worker lost later ends the process through ``on_abort`` with a message, not a core dump.

The protocol has no authentication and has had remote-code-execution fixes: loopback or a trusted network only.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from interns1_local.errors import RpcError, UsageError

from . import ggml_c

DEFAULT_PORT = 50052
PROTO_MAJOR = 7  # RPC_PROTO_MAJOR_VERSION of the llama.cpp this package pins
CMD_GET_DEVICE_MEMORY, CMD_HELLO, CMD_DEVICE_COUNT = 11, 14, 15  # enum rpc_cmd
CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE: all zero asks for plain TCP
HOW_TO_BUILD = ("this llama-cpp-python build has no RPC backend; rebuild it with it: CMAKE_ARGS=\"-DGGML_RPC=on\" "
                "pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python==0.3.36 (pip's wheel cache "
                "ignores CMAKE_ARGS, hence --no-cache-dir)")


@dataclass(frozen=True)
class Worker:
    endpoint: str
    version: str
    memory: tuple[tuple[int, int], ...]  # (free, total) bytes of each device it serves


def parse_endpoints(spec: str) -> list[str]:
    """``HOST:PORT[,HOST:PORT...]`` -> endpoints; a malformed one is a UsageError naming it."""
    endpoints = []
    for item in (s.strip() for s in spec.split(",")):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--rpc takes HOST:PORT[,HOST:PORT...]; {item!r} is not HOST:PORT")
        endpoints.append(f"{host}:{int(port)}")
    if len(set(endpoints)) != len(endpoints):
        raise UsageError("--rpc names the same worker twice")
    return endpoints


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _exchange(sock: socket.socket, cmd: int, payload: bytes, expect: int) -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    size = struct.unpack("<Q", _read(sock, 8))[0]
    if size != expect:
        raise ConnectionError(f"unexpected reply of {size} bytes to command {cmd}")
    return _read(sock, size)


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the worker closed the connection")
        data += chunk
    return data


def probe(endpoint: str, timeout: float = 5.0) -> Worker:
    """Connect, say HELLO, ask its devices' memory; RpcError naming the endpoint if any of it fails."""
    host, _, port = endpoint.rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as exc:  # refused, unreachable, timed out
        raise RpcError(f"RPC worker not reachable ({exc}); is `interns1 rpc-worker` running there?", endpoint) from exc
    try:
        with sock:
            hello = _exchange(sock, CMD_HELLO, bytes(CONN_CAPS), 4 + CONN_CAPS)
            major, minor, patch = hello[0], hello[1], hello[2]
            if major != PROTO_MAJOR:
                raise RpcError(f"speaks RPC protocol {major}.{minor}.{patch}, this build speaks {PROTO_MAJOR}.x: "
                               "run the same llama-cpp-python version on every machine", endpoint)
            count = struct.unpack("<I", _exchange(sock, CMD_DEVICE_COUNT, b"", 4))[0]
            memory = tuple(struct.unpack("<QQ", _exchange(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", i), 16))
                           for i in range(count))
    except TimeoutError as exc:
        raise RpcError(f"the RPC worker accepted the connection but did not answer within {timeout:g} s: it serves "
                       "one client at a time, and another one is using it", endpoint) from exc
    except OSError as exc:  # reset, closed, not an RPC worker
        raise RpcError(f"no RPC worker answers there ({exc})", endpoint) from exc
    return Worker(endpoint, f"{major}.{minor}.{patch}", memory)


def _rpc_reg() -> int:
    lib = ggml_c.libs()
    reg = lib.reg.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise UsageError(HOW_TO_BUILD)
    return reg


def supported() -> bool:
    return "RPC" in ggml_c.backend_names()


def _proc(name: str) -> int:
    fn = ggml_c.libs().base.ggml_backend_reg_get_proc_address(_rpc_reg(), name.encode())
    if not fn:
        raise UsageError(f"this build's RPC backend lacks {name}")
    return fn


_added: dict[str, int] = {}  # endpoint -> its registry (llama.cpp makes one per endpoint and process)


def add_workers(endpoints: list[str], timeout: float = 5.0) -> list[Worker]:
    """Probe every endpoint, then register each as a backend whose devices (``RPC0[host:port]``, ...) llama.cpp's
    loader treats as GPUs: offloaded layers go there."""
    _rpc_reg()
    workers = [probe(e, timeout) for e in endpoints]
    add = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(_proc("ggml_backend_rpc_add_server"))
    for worker in workers:
        reg = _added.get(worker.endpoint) or add(worker.endpoint.encode())  # llama.cpp keeps one per endpoint
        if not reg:
            raise RpcError("llama.cpp could not add this RPC worker", worker.endpoint)
        ggml_c.libs().reg.ggml_backend_register(reg)  # again after remove_workers; a no-op if registered
        _added[worker.endpoint] = reg
    return workers


def remove_workers(endpoints: list[str]) -> None:
    """Take the workers' devices out of ggml's registry (after the model that used them is freed): llama.cpp puts a
    model's offloaded layers on every registered device, so a later load must not find a worker it did not ask for.
    ggml files every RPC device under the one "RPC" registry (not the endpoint's), and removes a registry's devices
    with it: so that one goes too and comes back empty, and the workers of any other live model in this process
    with it (one model per process is the CLI's and the server's case)."""
    if not endpoints:
        return
    lib = ggml_c.libs().reg
    main = _rpc_reg()
    for endpoint in endpoints:
        if endpoint in _added:
            lib.ggml_backend_unload(_added[endpoint])
    for endpoint in set(_added) - set(endpoints):
        lib.ggml_backend_unload(_added[endpoint])  # their devices go with the "RPC" registry below
    lib.ggml_backend_unload(main)
    lib.ggml_backend_register(main)


def serve(host: str, port: int, device: str, threads: int, cache_dir: str | None) -> None:
    """llama.cpp's RPC server on ``host:port`` for one local device; blocks, serving one client at a time."""
    _rpc_reg()
    dev = ggml_c.libs().reg.ggml_backend_dev_by_name(device.encode())
    if not dev:
        names = ", ".join(d.name for d in ggml_c.all_devices() if not d.name.startswith("RPC"))
        raise UsageError(f"no device {device!r} in this build; devices: {names}")
    start = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                             ctypes.POINTER(ctypes.c_void_p))(_proc("ggml_backend_rpc_start_server"))
    devices = (ctypes.c_void_p * 1)(dev)
    start(f"{host}:{port}".encode(), cache_dir.encode() if cache_dir else None, threads, 1, devices)


_ABORT = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_handler: list[object] = []  # keeps the C callback alive


def on_abort(handler: Callable[[str], None]) -> None:
    """Call ``handler(message)`` where ggml would abort the process (e.g. an RPC worker lost mid-generation); ggml
    aborts anyway if the handler returns, so a handler ends the process or never returns."""
    callback = _ABORT(lambda message: handler(message.decode(errors="replace")))
    _handler[:] = [callback]
    ggml_c.libs().base.ggml_set_abort_callback(callback)
