"""The chat page at ``/`` (static files in interns1_local/webui/, package data) and the two routes it needs besides
the chat API: ``/webui/info`` (the model's name and context) and ``/api/depict`` (a SMILES string drawn as SVG).

The page and its files are public (they hold nothing; the page asks for the API key when a route answers 401); the
two routes are behind the key like every other. Model output stays inert on the page: it builds DOM nodes from text
(never HTML), and the Content-Security-Policy allows scripts, styles and connections to this origin only, with no
inline script.
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from .. import __version__, depict
from .app import ApiError, state_of

# The page's files, by the name it asks for, with their types; nothing else under /webui/ is served.
ASSETS = {"app.js": "text/javascript", "render.js": "text/javascript", "math.js": "text/javascript",
          "store.js": "text/javascript", "style.css": "text/css"}
PUBLIC_PATHS = frozenset({"/", *(f"/webui/{name}" for name in ASSETS)})
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "media-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
# An SVG opened on its own (not through <img>) is a document that could run script: none is allowed in it.
SVG_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
               "X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=86400"}

page_router = APIRouter(include_in_schema=False)  # with the page on (not --no-webui)
api_router = APIRouter()


@functools.cache
def _asset(name: str, compressed: bool) -> bytes:
    data = resources.files("interns1_local.webui").joinpath(name).read_bytes()
    return gzip.compress(data, compresslevel=9, mtime=0) if compressed else data


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header admits gzip (``gzip`` or ``*``, with a q-value above 0)."""
    for item in accept_encoding.split(","):
        coding, *params = (part.strip().lower() for part in item.split(";"))
        if coding in ("gzip", "*"):
            q = next((p.removeprefix("q=") for p in params if p.startswith("q=")), "1")
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


def _page_file(request: Request, name: str, media_type: str) -> Response:
    """A page file, gzipped (once, then from memory) for a client that takes it."""
    compressed = accepts_gzip(request.headers.get("accept-encoding", ""))
    headers = PAGE_HEADERS | {"Vary": "Accept-Encoding"} | ({"Content-Encoding": "gzip"} if compressed else {})
    return Response(_asset(name, compressed), media_type=media_type, headers=headers)


@page_router.api_route("/", methods=["GET", "HEAD"])
async def index(request: Request) -> Response:
    return _page_file(request, "index.html", "text/html; charset=utf-8")


@page_router.api_route("/webui/{name}", methods=["GET", "HEAD"])
async def asset(request: Request, name: str) -> Response:
    if name not in ASSETS:
        raise ApiError(404, f"no page file {name!r}")
    return _page_file(request, name, f"{ASSETS[name]}; charset=utf-8")


@api_router.get("/webui/info")
async def info(request: Request) -> dict[str, Any]:
    """What the page shows in its header and needs to know: the model's id, the context length it serves with,
    whether images can be sent and molecules drawn."""
    state = state_of(request)
    return {"model": state.options.model_name, "context_length": state.engine.backend.n_ctx,
            "vision": state.engine.backend.mtmd is not None, "depiction": depict.available(),
            "max_smiles": depict.MAX_SMILES, "version": __version__}


@api_router.get("/api/depict", responses={200: {"content": {"image/svg+xml": {}}}})
async def depiction(smiles: Annotated[str, Query(max_length=100_000)],
                    detect: Annotated[bool, Query()] = False) -> Response:
    """``smiles`` drawn by RDKit as ``image/svg+xml``. 400: RDKit cannot parse it (or, with ``detect``, the dynamic
    tokenizer's detector would not read it as one SMILES span); 413: longer than ``depict.MAX_SMILES``; 404: RDKit is
    not installed."""
    if len(smiles) > depict.MAX_SMILES:
        raise ApiError(413, f"smiles: at most {depict.MAX_SMILES} characters (got {len(smiles)})", param="smiles")
    if detect and not await run_in_threadpool(depict.is_smiles_span, smiles):
        raise ApiError(400, "smiles: not one SMILES span by the dynamic tokenizer's detector", param="smiles")
    svg = await run_in_threadpool(depict.depict_svg, smiles)
    return Response(svg, media_type="image/svg+xml", headers=SVG_HEADERS)
