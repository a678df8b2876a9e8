"""Bounded http(s) downloads for images: checked addresses, pinned connections, re-checked redirects, capped bodies.

The host is resolved once, every address it resolves to is checked, and the connection goes to a checked address
(TLS still verifies the certificate against the host name). Environment proxies are not used: a proxy would make the
address check meaningless.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from interns1_local.errors import ImageError

if TYPE_CHECKING:
    from interns1_local.runtime.images import ImageLimits

_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_HEADERS = {"User-Agent": "interns1-local", "Accept": "image/*", "Accept-Encoding": "identity"}

# Never a place to fetch an image from, even with private addresses allowed: 0.0.0.0 and :: reach the local machine.
_NEVER = (("is_unspecified", "unspecified"), ("is_multicast", "multicast"), ("is_reserved", "reserved"))
# Addresses inside this machine or its networks, blocked unless ImageLimits.allow_private_addresses.
_PRIVATE = (("is_loopback", "loopback"), ("is_link_local", "link-local"), ("is_private", "private"),
            ("is_site_local", "site-local"))

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def download(url: str, limits: ImageLimits, where: str) -> bytes:
    """GET ``url`` following up to ``limits.max_redirects`` redirects; the body, at most ``limits.max_bytes``."""
    deadline = time.monotonic() + limits.url_timeout_s
    current = url
    for _ in range(limits.max_redirects + 1):
        connection, response = _get(current, limits, where, deadline)
        try:
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise ImageError(f"HTTP {response.status} redirect without a Location header from {current}",
                                     where)
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise ImageError(f"HTTP {response.status} {response.reason} from {current}", where)
            return _read_body(connection, response, limits, where, deadline)
        finally:
            connection.close()
    raise ImageError(f"more than {limits.max_redirects} redirects (ImageLimits.max_redirects)", where)


def blocked_reason(address: Address, allow_private: bool) -> str | None:
    """Why ``address`` may not be fetched from (e.g. ``"loopback"``), or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    checks = _NEVER if allow_private else _NEVER + _PRIVATE
    reason = next((name for attribute, name in checks if getattr(address, attribute, False)), None)
    if reason is None and not allow_private and not address.is_global:
        reason = "non-public"  # e.g. 100.64.0.0/10, shared address space
    return reason


def _get(url: str, limits: ImageLimits, where: str,
         deadline: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Send the GET to a checked address of the URL's host; the open connection and the response headers."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _PORTS:
        raise ImageError(f"URL not allowed: {url!r} (scheme {scheme!r}); only http and https", where)
    try:
        host, port = parts.hostname, parts.port or _PORTS[scheme]
    except ValueError as exc:  # a port that is not a number
        raise ImageError(f"malformed URL {url!r}: {exc}", where) from exc
    if not host:
        raise ImageError(f"malformed URL {url!r}: no host", where)
    address = _checked_address(host, port, limits, where)
    connection = _CONNECTIONS[scheme](host, port, address, _remaining(deadline, limits, where))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", target, headers=_HEADERS)
        return connection, connection.getresponse()
    except (OSError, http.client.HTTPException) as exc:  # TimeoutError and ssl.SSLError are OSErrors
        connection.close()
        raise _network_error(exc, url, limits, where) from exc


def _checked_address(host: str, port: int, limits: ImageLimits, where: str) -> str:
    """Resolve ``host`` and check every address it has; the address to connect to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageError(f"cannot resolve host {host!r}: {exc}", where) from exc
    addresses = [str(info[4][0]) for info in infos]
    for text in addresses:
        reason = blocked_reason(ipaddress.ip_address(text.partition("%")[0]), limits.allow_private_addresses)
        if reason is not None:
            fix = ("never allowed" if reason in dict(_NEVER).values()
                   else "set ImageLimits.allow_private_addresses to allow it")
            raise ImageError(f"private address blocked: {host} resolves to {text}, a {reason} address ({fix})",
                             where)
    return addresses[0]


def _read_body(connection: http.client.HTTPConnection, response: http.client.HTTPResponse, limits: ImageLimits,
               where: str, deadline: float) -> bytes:
    """Stream the body, stopping as soon as it passes ``max_bytes`` or the deadline."""
    declared = response.getheader("Content-Length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise ImageError(f"too large: the server declares {declared} bytes, more than {limits.max_bytes} "
                         "(the byte limit)", where)
    chunks: list[bytes] = []
    total = 0
    while True:
        if connection.sock is not None:
            connection.sock.settimeout(_remaining(deadline, limits, where))
        try:
            chunk = response.read1(_CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise _network_error(exc, "the body", limits, where) from exc
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limits.max_bytes:
            raise ImageError(f"too large: the body passes {limits.max_bytes} bytes (the byte limit)", where)
        chunks.append(chunk)


def _network_error(exc: Exception, what: str, limits: ImageLimits, where: str) -> ImageError:
    if isinstance(exc, TimeoutError):
        return ImageError(f"timed out after {limits.url_timeout_s} s (ImageLimits.url_timeout_s)", where)
    return ImageError(f"download failed ({what}): {type(exc).__name__}: {exc}", where)


def _remaining(deadline: float, limits: ImageLimits, where: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ImageError(f"timed out after {limits.url_timeout_s} s (ImageLimits.url_timeout_s)", where)
    return left


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a given address, with the URL's host in the Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to a given address; the certificate is verified against the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address
        self._tls = ssl.create_default_context()

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


_CONNECTIONS: dict[str, type[_PinnedHTTP] | type[_PinnedHTTPS]] = {"http": _PinnedHTTP, "https": _PinnedHTTPS}
