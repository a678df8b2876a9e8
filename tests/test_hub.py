"""Hugging Face repo ids as model specs: parsing, GGUF and mmproj selection, the offline cache, the download calls.

Fully offline: sockets are blocked; the cache is a real ``models--owner--name`` layout (refs, snapshots linking to
blobs) built in tmp_path; the online path runs against a patched ``model_info`` and a patched ``hf_hub_download``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.hf_api import ModelInfo

from interns1_local.errors import GGUFFileError, UsageError
from interns1_local.runtime import hub
from interns1_local.runtime.hub import looks_like_repo_id, parse_repo_spec, resolve_repo

REPO = "internlm/Intern-S1-mini-GGUF"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
QUANTS = ["Intern-S1-mini-Q4_K_M.gguf", "Intern-S1-mini-Q8_0.gguf", "Intern-S1-mini-Q4_K_S.gguf",
          "Intern-S1-mini-F16.gguf"]
PROJS = ["mmproj-Intern-S1-mini-Q8_0.gguf", "mmproj-Intern-S1-mini-f16.gguf", "mmproj-Intern-S1-mini-bf16.gguf"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails, as on a machine without a network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache, made the default; offline mode on. huggingface_hub reads both env vars at import time."""
    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root


def fill(cache: Path, files: list[str], repo: str = REPO) -> Path:
    """Cache ``files`` as huggingface_hub does: blobs, snapshot entries linking to them, refs/main -> the commit."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / COMMIT
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(COMMIT)
    (storage / "blobs").mkdir(exist_ok=True)
    for name in files:
        blob = storage / "blobs" / format(abs(hash(name)), "040x")
        blob.write_bytes(b"GGUF" + name.encode())
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


# ------------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(("spec", "expected"), [
    ("internlm/Intern-S1-mini-GGUF", True),
    ("internlm/Intern-S1-mini-GGUF:Q4_K_M", True),
    ("internlm/Intern-S1-mini-GGUF:ud-q4_k_xl", True),
    ("hf.co/internlm/Intern-S1-mini-GGUF", True),
    ("hf.co/internlm/Intern-S1-mini-GGUF:Q8_0", True),
    ("huggingface.co/internlm/Intern-S1-mini-GGUF", True),
    ("models/x.gguf", False),  # a mistyped local file: "no such file", not a Hub look-up
    ("models/X.GGUF", False),
    ("owner/name:model.gguf", False),
    ("x.gguf", False),
    ("./x", False),
    ("../models/x", False),
    ("/abs/path/model", False),
    ("~/models/x", False),
    ("gpt2", False),  # no namespace: a bare word is more likely a file name
    ("a/b/c", False),
    ("owner/name:", False),
    ("owner/name:Q4:K", False),
    ("owner/-name", False),
    ("owner/na--me", False),
    ("hf.co/x.gguf", False),
    ("", False),
])
def test_looks_like_repo_id(spec: str, expected: bool) -> None:
    assert looks_like_repo_id(spec) is expected


def test_an_existing_path_is_never_a_repo_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_repo_spec("owner/name") == ("owner/name", None)
    assert not looks_like_repo_id("owner/name")


def test_parse_repo_spec_strips_prefix_and_splits_tag() -> None:
    assert parse_repo_spec("hf.co/internlm/Intern-S1-mini-GGUF:Q4_K_M") == (REPO, "Q4_K_M")
    assert parse_repo_spec("models/x.gguf") is None


def test_not_a_repo_id_is_a_usage_error(cache: Path) -> None:
    with pytest.raises(UsageError, match="not a Hugging Face repo id"):
        resolve_repo("models/x.gguf")


# ------------------------------------------------------------------------------------- selection (offline)


@pytest.mark.parametrize(("tag", "expected"), [
    ("Q8_0", "Intern-S1-mini-Q8_0.gguf"),
    ("q4_k_s", "Intern-S1-mini-Q4_K_S.gguf"),  # case-insensitive
    ("F16", "Intern-S1-mini-F16.gguf"),  # not the f16 mmproj
])
def test_tag_selects_the_quantisation(cache: Path, tag: str, expected: str) -> None:
    snapshot = fill(cache, QUANTS + PROJS)
    assert resolve_repo(f"{REPO}:{tag}") == (snapshot / expected, snapshot / "mmproj-Intern-S1-mini-f16.gguf")


@pytest.mark.parametrize(("files", "expected"), [
    (QUANTS, "Intern-S1-mini-Q4_K_M.gguf"),
    (QUANTS[1:], "Intern-S1-mini-Q8_0.gguf"),
    (["Intern-S1-mini-IQ2_XXS.gguf"], "Intern-S1-mini-IQ2_XXS.gguf"),
])
def test_default_selection(cache: Path, files: list[str], expected: str) -> None:
    snapshot = fill(cache, files)
    assert resolve_repo(REPO) == (snapshot / expected, None)


def test_q4_k_does_not_match_q4_k_m(cache: Path) -> None:
    fill(cache, QUANTS)
    with pytest.raises(UsageError, match="no GGUF with tag Q4_K .*available tags: F16, Q4_K_M, Q4_K_S, Q8_0"):
        resolve_repo(f"{REPO}:Q4_K")


def test_ambiguous_default_lists_the_tags(cache: Path) -> None:
    fill(cache, ["m-Q5_K_M.gguf", "m-Q6_K.gguf", "mmproj-m-f16.gguf"])
    with pytest.raises(UsageError, match=r"2 GGUFs, no single Q4_K_M/Q8_0 default .*available tags: Q5_K_M, Q6_K;"):
        resolve_repo(REPO)


def test_unknown_tag_lists_the_available_ones(cache: Path) -> None:
    fill(cache, QUANTS)
    with pytest.raises(UsageError, match="no GGUF with tag IQ1_S .*available tags: F16, Q4_K_M, Q4_K_S, Q8_0"):
        resolve_repo(f"{REPO}:IQ1_S")


def test_a_tag_matching_several_files_names_them(cache: Path) -> None:
    fill(cache, ["m-Q4_K_M.gguf", "m-Q4_K_M-imat.gguf"])
    with pytest.raises(UsageError, match="tag Q4_K_M matches 2 GGUFs .*m-Q4_K_M-imat, m-Q4_K_M"):
        resolve_repo(f"{REPO}:Q4_K_M")


def test_split_model_returns_the_first_shard(cache: Path) -> None:
    shards = [f"Q4_K_M/Intern-S1-Q4_K_M-0000{i}-of-00003.gguf" for i in (3, 1, 2)]
    snapshot = fill(cache, shards + ["Intern-S1-Q8_0.gguf", "mmproj-F16.gguf"])
    model, mmproj = resolve_repo(f"hf.co/{REPO}:Q4_K_M")
    assert model == snapshot / "Q4_K_M/Intern-S1-Q4_K_M-00001-of-00003.gguf"
    assert mmproj == snapshot / "mmproj-F16.gguf"
    assert sorted(p.name for p in model.parent.iterdir()) == sorted(Path(s).name for s in shards)


def test_a_missing_shard_is_an_error(cache: Path) -> None:
    fill(cache, [f"m-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 3)])
    with pytest.raises(GGUFFileError, match="m-Q4_K_M has 2 of its 3 shards in the cached snapshot .*go online"):
        resolve_repo(REPO)


@pytest.mark.parametrize(("projs", "expected"), [
    (PROJS, "mmproj-Intern-S1-mini-f16.gguf"),
    (PROJS[:1] + PROJS[2:], "mmproj-Intern-S1-mini-bf16.gguf"),
    (PROJS[:1], "mmproj-Intern-S1-mini-Q8_0.gguf"),
])
def test_mmproj_prefers_f16(cache: Path, projs: list[str], expected: str) -> None:
    snapshot = fill(cache, QUANTS[:1] + projs)
    assert resolve_repo(REPO)[1] == snapshot / expected


def test_repo_without_model_gguf(cache: Path) -> None:
    fill(cache, ["README.md", "mmproj-f16.gguf"])
    with pytest.raises(GGUFFileError, match="no model GGUF"):
        resolve_repo(REPO)


def test_not_cached_while_offline(cache: Path) -> None:
    with pytest.raises(GGUFFileError, match=r"not in the Hugging Face cache .*offline mode is on"):
        resolve_repo(REPO)


def test_an_explicit_cache_dir_and_offline_flag_win(cache: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # offline=True must keep the Hub out of it
    other = tmp_path / "other-cache"
    snapshot = fill(other, QUANTS[:1])
    assert resolve_repo(REPO, offline=True, cache_dir=other) == (snapshot / QUANTS[0], None)
    with pytest.raises(GGUFFileError, match="not in the Hugging Face cache"):
        resolve_repo(REPO, offline=True)  # the default cache is empty


def test_unreachable_hub_falls_back_to_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    with pytest.raises(GGUFFileError, match=r"not in the Hugging Face cache .*the Hub cannot be reached"):
        resolve_repo(REPO)  # real HfApi, real httpx2, refused by the blocked socket
    snapshot = fill(cache, QUANTS[:1])
    assert resolve_repo(REPO) == (snapshot / QUANTS[0], None)


# ---------------------------------------------------------------------------------- online (patched listing)


@pytest.fixture
def online(cache: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Path | None]]:
    """``model_info`` lists QUANTS, split Q2_K shards and PROJS; ``hf_hub_download`` records its calls."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    files = ["README.md", *QUANTS, *PROJS, *(f"Intern-S1-mini-Q2_K-0000{i}-of-00002.gguf" for i in (1, 2))]
    def model_info(self: HfApi, repo_id: str, *, timeout: float | None = None) -> ModelInfo:
        assert (repo_id, timeout is not None) == (REPO, True)  # a dead network must fail fast, not hang
        return ModelInfo(id=repo_id, siblings=[{"rfilename": f} for f in files])

    monkeypatch.setattr(HfApi, "model_info", model_info)
    calls: list[tuple[str, str, Path | None]] = []

    def download(repo_id: str, filename: str, *, cache_dir: Path | None = None) -> str:
        calls.append((repo_id, filename, cache_dir))
        return str(cache / "snapshots" / filename)

    monkeypatch.setattr(hub, "hf_hub_download", download)
    return calls


def test_online_downloads_only_the_chosen_files(online: list, cache: Path) -> None:
    model, mmproj = resolve_repo(REPO)
    assert online == [(REPO, "Intern-S1-mini-Q4_K_M.gguf", None), (REPO, "mmproj-Intern-S1-mini-f16.gguf", None)]
    assert (model, mmproj) == (cache / "snapshots" / online[0][1], cache / "snapshots" / online[1][1])


def test_online_split_model_downloads_every_shard(online: list, cache: Path) -> None:
    model, _ = resolve_repo(f"{REPO}:q2_k", cache_dir=cache)
    assert [name for _, name, _ in online] == ["Intern-S1-mini-Q2_K-00001-of-00002.gguf",
                                               "Intern-S1-mini-Q2_K-00002-of-00002.gguf",
                                               "mmproj-Intern-S1-mini-f16.gguf"]
    assert {where for _, _, where in online} == {cache}
    assert model.name == "Intern-S1-mini-Q2_K-00001-of-00002.gguf"


def test_online_unknown_tag_lists_the_repo_tags(online: list) -> None:
    with pytest.raises(UsageError, match=f"no GGUF with tag Q3_K_L in {REPO}; .*tags: F16, Q2_K, Q4_K_M, Q4_K_S"):
        resolve_repo(f"{REPO}:Q3_K_L")
    assert online == []


def test_unknown_repo_says_so(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/models/owner/nope"))

    def missing(self: HfApi, repo_id: str, *, timeout: float | None = None) -> ModelInfo:
        raise RepositoryNotFoundError("404 Client Error: Repository Not Found", response=response)

    monkeypatch.setattr(HfApi, "model_info", missing)
    with pytest.raises(UsageError, match="no such local file, nor a model repo on the Hugging Face Hub"):
        resolve_repo("owner/nope")


def test_failed_download_says_run_again(online: list, monkeypatch: pytest.MonkeyPatch) -> None:
    def cut(repo_id: str, filename: str, *, cache_dir: Path | None = None) -> str:
        raise httpx2.ReadTimeout("The read operation timed out")

    monkeypatch.setattr(hub, "hf_hub_download", cut)
    with pytest.raises(GGUFFileError, match="download failed .*run the command again to resume"):
        resolve_repo(REPO)


def test_cli_runs_a_repo_id_from_the_cache(converted, tmp_path: Path) -> None:
    """`interns1 run owner/name:F16` offline: real converted GGUFs in a pre-filled cache, loaded and answered from."""
    files = converted("f16", "f16")
    root = tmp_path / "hf"
    snapshot = root / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(COMMIT)
    (snapshot / "Intern-S1-mini-F16.gguf").symlink_to(files.model.path)
    (snapshot / "mmproj-Intern-S1-mini-f16.gguf").symlink_to(files.mmproj.path)
    env = {**os.environ, "HF_HUB_CACHE": str(root), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "interns1_local", "run", f"hf.co/{REPO}:F16", "Hi", "--json",
                           "--no-think", "--temperature", "0", "--max-tokens", "4"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stats"]["generated_tokens"] > 0
    missing = subprocess.run([sys.executable, "-m", "interns1_local", "run", f"{REPO}:Q2_K", "Hi"],
                             capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode == 2 and "F16" in missing.stderr  # the error lists the tags there are
