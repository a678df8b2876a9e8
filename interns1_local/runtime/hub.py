"""Hugging Face repo ids as model specs: ``[hf.co/]owner/name[:TAG]`` -> (model GGUF, mmproj GGUF) in the HF cache.

Files land in huggingface_hub's standard cache (HF_HOME / HF_HUB_CACHE), which resumes interrupted downloads and draws
the progress bars. Offline (HF_HUB_OFFLINE=1, or the Hub unreachable) the same selection runs on the cached snapshot.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import httpx2  # huggingface_hub>=2 talks to the Hub through it: its TransportError is "the Hub is unreachable"
from huggingface_hub import HfApi, constants, hf_hub_download, is_offline_mode
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id

from interns1_local.errors import GGUFFileError, UsageError

_PREFIXES = ("hf.co/", "huggingface.co/")  # Ollama's spelling, and the full host
_TAG = re.compile(r"[A-Za-z0-9][\w.-]{0,63}")
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})$")  # llama.cpp's split files: NAME-00001-of-00003.gguf
_DEFAULT_TAGS = ("Q4_K_M", "Q8_0")  # without a tag, the first of these the repo has (or its only model)
_MMPROJ_TAGS = ("f16", "bf16")  # with several projectors, the first of these (else the first by name)
_UNREACHABLE = (HfHubHTTPError, OfflineModeIsEnabled, httpx2.TransportError)
_LIST_TIMEOUT_S = 10.0  # for the one listing request; downloads keep huggingface_hub's own timeouts


def parse_repo_spec(spec: str) -> tuple[str, str | None] | None:
    """``(repo_id, tag or None)`` for ``[hf.co/]owner/name[:TAG]``; None when ``spec`` is not one."""
    body = next((spec[len(p):] for p in _PREFIXES if spec.startswith(p)), spec)
    repo_id, colon, tag = body.partition(":")
    # strict, so that a mistyped local path reads as "no such file", not as a Hub look-up
    if spec.lower().endswith(".gguf") or repo_id.count("/") != 1 or (colon and not _TAG.fullmatch(tag)):
        return None
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id, tag or None


def looks_like_repo_id(spec: str) -> bool:
    """True when ``spec`` is no existing path and reads as ``[hf.co/]owner/name[:TAG]``."""
    return not Path(spec).exists() and parse_repo_spec(spec) is not None


def resolve_repo(spec: str, *, offline: bool | None = None, cache_dir: Path | None = None) -> tuple[Path, Path | None]:
    """The model GGUF (first shard of a split one) and the mmproj (or None) of a GGUF repo, downloaded if needed.

    ``offline`` defaults to HF_HUB_OFFLINE; ``cache_dir`` to HF_HUB_CACHE. A Hub that cannot be reached counts as
    offline: the files come from the cached snapshot of the repo's main branch.
    """
    parsed = parse_repo_spec(spec)
    if parsed is None:
        raise UsageError("not a Hugging Face repo id: expected owner/name or owner/name:TAG "
                         "(e.g. internlm/Intern-S1-mini-GGUF:Q4_K_M)", spec)
    repo_id, tag = parsed
    reason = "offline mode is on (HF_HUB_OFFLINE=1)"
    if not (is_offline_mode() if offline is None else offline):
        try:
            # model_info, not list_repo_files: one request and no retries, so that a dead network fails fast
            info = HfApi().model_info(repo_id, timeout=_LIST_TIMEOUT_S)
        except RepositoryNotFoundError as exc:  # also gated and private repos without a token
            raise UsageError("no such local file, nor a model repo on the Hugging Face Hub (for a gated or private "
                             "repo, log in with `hf auth login`)", spec) from exc
        except _UNREACHABLE as exc:
            reason = f"the Hub cannot be reached ({_first_line(exc)})"
        else:
            model, mmproj = _select([s.rfilename for s in info.siblings or []], tag, spec, f"in {repo_id}", "")
            paths = _download(repo_id, [*model, *([mmproj] if mmproj else [])], cache_dir, spec)
            return paths[0], paths[-1] if mmproj else None
    snapshot = _cached_snapshot(repo_id, cache_dir, spec, reason)
    files = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.gguf") if p.is_file()]
    model, mmproj = _select(files, tag, spec, f"in the cached snapshot of {repo_id}",
                            f"; {reason}: go online to fetch others")
    return snapshot / model[0], snapshot / mmproj if mmproj else None


def _stem(name: str) -> str:
    """The path without ``.gguf`` and without a shard suffix: one entry per model, however it is split."""
    return _SHARD.sub("", name[: -len(".gguf")])


def _tag(stem: str) -> str:
    """The quantisation a stem ends with: ``Q4_K_M/Intern-S1-mini-Q4_K_M`` -> ``Q4_K_M``."""
    return re.split(r"[-./]", stem)[-1]


def _select(files: list[str], tag: str | None, spec: str, source: str, hint: str) -> tuple[list[str], str | None]:
    """The chosen model's files (all shards, first shard first) and the mmproj, from a repo's file list."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    projs = [f for f in ggufs if PurePosixPath(f).name.lower().startswith("mmproj")]
    models: dict[str, list[str]] = {}
    for f in ggufs:
        if f not in projs:
            models.setdefault(_stem(f), []).append(f)
    if not models:
        raise GGUFFileError(f"no model GGUF {source}: is it a GGUF repo? (a checkpoint needs `interns1 convert`)", spec)

    def tagged(t: str) -> list[str]:  # the tag is a whole [-./]-separated part of the name: Q4_K is not Q4_K_M
        return [m for m in models if re.search(rf"(^|[-./]){re.escape(t)}($|[-./])", m, re.IGNORECASE)]

    if tag:
        chosen = tagged(tag)
    else:
        chosen = list(models) if len(models) == 1 else next(filter(None, map(tagged, _DEFAULT_TAGS)), [])
    if len(chosen) != 1:
        tags = ", ".join(sorted({_tag(m) for m in models}, key=str.lower))
        if tag and chosen:
            raise UsageError(f"tag {tag} matches {len(chosen)} GGUFs {source} ({', '.join(chosen)}): "
                             "pass the longer tag of the one you want", spec)
        what = f"no GGUF with tag {tag}" if tag else f"{len(models)} GGUFs, no single {'/'.join(_DEFAULT_TAGS)} default"
        raise UsageError(f"{what} {source}; pick one with owner/name:TAG, available tags: {tags}{hint}", spec)
    shards = models[chosen[0]]
    split = _SHARD.search(shards[0][: -len(".gguf")])
    expected = int(split.group(2)) if split else 1
    if len(shards) != expected or (split and split.group(1) != "00001"):
        raise GGUFFileError(f"{chosen[0]} has {len(shards)} of its {expected} shards {source}{hint}", spec)
    preferred = (p for t in _MMPROJ_TAGS for p in projs if _tag(_stem(p)).lower() == t)
    mmproj = next(preferred, projs[0] if projs else None)
    return shards, mmproj


def _download(repo_id: str, files: list[str], cache_dir: Path | None, spec: str) -> list[Path]:
    """Fetch ``files`` into the cache (already complete ones are skipped, partial ones resumed); their paths there."""
    try:
        # the snapshot paths, not the blobs they link to: llama.cpp finds a split model's shards by name beside it
        return [Path(hf_hub_download(repo_id, f, cache_dir=cache_dir)) for f in files]
    except _UNREACHABLE as exc:
        raise GGUFFileError(f"download failed ({_first_line(exc)}): run the command again to resume it", spec) from exc


def _cached_snapshot(repo_id: str, cache_dir: Path | None, spec: str, reason: str) -> Path:
    """The cached snapshot of the repo's main branch, read from ``refs/main``.

    Not ``snapshot_download(local_files_only=True)``: with a cached file listing it rejects a snapshot that lacks any
    of the repo's files, and a GGUF repo is cached one quantisation at a time.
    """
    root = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = root / "refs" / "main"
    snapshot = root / "snapshots" / ref.read_text().strip() if ref.is_file() else None
    if snapshot is None or not snapshot.is_dir():
        raise GGUFFileError(f"not in the Hugging Face cache ({root.parent}) and {reason}: download it once online, "
                            "or pass a local GGUF path", spec)
    return snapshot


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
