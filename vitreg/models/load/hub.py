"""Where a named model's weights live, on this machine or at their publisher, and the opt-in download.

Caches are the ecosystem's own: the Hugging Face cache (``$HF_HOME``/hub, ``$HF_HUB_CACHE``) for timm names and
``hf:`` repo ids, and torch hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``) for the published DINOv2 and
DeiT-III ``.pth`` files. Nothing is fetched unless asked (``--download``, ``download=True``). A download then goes
through ``huggingface_hub`` (size and sha256 checked against the Hub's metadata) or, for the ``.pth`` files, a plain
HTTP transfer into torch hub's folder (size checked against Content-Length; Meta publishes no hash for these files),
written under a temporary name and renamed only when complete. Offline (``HF_HUB_OFFLINE=1``) or without a route it
fails within seconds, naming the file and where to put it; it never hangs (every request has a timeout).
"""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vitreg.errors import WeightsNotFoundError
from vitreg.models.load.filecheck import sha256_file
from vitreg.models.load.formats.base import SHARD_INDEX

TIMEOUT_S = 8.0  # per request ($VITREG_HTTP_TIMEOUT): an unreachable host fails within this, under 10 s
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"  # override: $VITREG_DINOV2_URL
DEIT3_URL = "https://dl.fbaipublicfiles.com/deit"  # override: $VITREG_DEIT_URL
# The original DeiT-III checkpoints (ImageNet-1k, 224 px) by timm architecture.
DEIT3_FILES = {
    "deit3_small_patch16_224": "deit_3_small_224_1k.pth",
    "deit3_base_patch16_224": "deit_3_base_224_1k.pth",
    "deit3_large_patch16_224": "deit_3_large_224_1k.pth",
    "deit3_huge_patch14_224": "deit_3_huge_224_1k.pth",
}


def hub_configs() -> tuple[str, ...]:
    """The config files that say a Hub repo's format (transformers' and timm's config.json, OpenCLIP's
    open_clip_config.json), from the registry of formats: every format published on the Hub states one."""
    from vitreg.models.load import formats

    return tuple(dict.fromkeys(f.config_file for f in formats.FORMATS if f.config_file and f.owner != "vitreg"))


def hub_weight_files() -> tuple[str, ...]:
    """Every weights file name a Hub-published format keeps its weights in (from the registry), in its order."""
    from vitreg.models.load import formats

    return tuple(
        dict.fromkeys(n for f in formats.FORMATS if f.config_file and f.owner != "vitreg" for n in f.weight_files)
    )


@dataclass(frozen=True)
class Source:
    """One published file: on the Hugging Face Hub (``repo``) or at a URL (saved under torch hub's folder)."""

    filename: str
    repo: str | None = None
    url: str | None = None

    @property
    def where(self) -> str:
        """Where a user puts the file by hand so that vitreg finds it."""
        if self.repo is not None:
            return f"the Hugging Face cache ({hf_cache_dir()}), e.g. `huggingface-cli download {self.repo}`"
        return str(torch_hub_checkpoints() / self.filename)


def timeout() -> float:
    return float(os.environ.get("VITREG_HTTP_TIMEOUT", TIMEOUT_S))


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def dinov2_source(arch: str, filename: str) -> Source:
    """``arch``: the hub entry without ``_reg`` (``dinov2_vits14``); ``filename`` as Meta names it."""
    base = os.environ.get("VITREG_DINOV2_URL", DINOV2_URL).rstrip("/")
    return Source(filename=filename, url=f"{base}/{arch}/{filename}")


def deit3_source(timm_name: str) -> Source | None:
    name = DEIT3_FILES.get(timm_name)
    if name is None:
        return None
    return Source(filename=name, url=f"{os.environ.get('VITREG_DEIT_URL', DEIT3_URL).rstrip('/')}/{name}")


def cached(source: Source) -> Path | None:
    """The file on this machine, if it is there (never a network call)."""
    if source.url is not None:
        path = torch_hub_checkpoints() / source.filename
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    assert source.repo is not None
    hit = try_to_load_from_cache(source.repo, source.filename, cache_dir=hf_cache_dir())
    return Path(hit) if isinstance(hit, str) and os.path.isfile(hit) else None


def fetch(source: Source) -> Path:
    """The file, downloaded when it is not on this machine; WeightsNotFoundError (naming it) when it cannot be."""
    hit = cached(source)
    if hit is not None:
        return hit
    if offline():
        raise WeightsNotFoundError(
            f"{source.filename}: not on this machine and HF_HUB_OFFLINE is set; put it in {source.where}"
        )
    if source.url is not None:
        return _download_url(source)
    return _download_hf(source)


class NotOnHub(WeightsNotFoundError):
    """The Hub answered: this repo has no such file (a folder format may keep its config under another name)."""


def _download_hf(source: Source) -> Path:
    """``huggingface_hub``'s download into its cache; it checks the size against the Hub's, and the blob it stores
    is named by the file's etag, which for large (LFS) files is its sha256: checked here."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError

    assert source.repo is not None
    endpoint = os.environ.get("HF_ENDPOINT")  # read here (huggingface_hub reads it once at import)
    try:
        # one request without retries first: no route or no answer fails within the timeout (the download itself
        # retries five times with back-off, which would take a minute to give up on an unreachable host)
        get_hf_file_metadata(hf_hub_url(source.repo, source.filename, endpoint=endpoint), timeout=timeout())
        path = Path(hf_hub_download(source.repo, source.filename, cache_dir=hf_cache_dir(), etag_timeout=timeout(),
                                    endpoint=endpoint))  # fmt: skip
    except EntryNotFoundError:
        raise NotOnHub(f"{source.filename}: {source.repo} on the Hub has no such file") from None
    except Exception as err:
        if not _transfer_error(err):
            raise
        if getattr(getattr(err, "response", None), "status_code", None) == 404:
            raise NotOnHub(f"{source.filename}: {source.repo} on the Hub has no such file") from None
        _drop_incomplete(source.repo)
        raise WeightsNotFoundError(
            f"{source.filename}: cannot download it from {source.repo} ({_reason(err)}); put it in {source.where}"
        ) from None
    etag = path.resolve().name
    if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) and sha256_file(path) != etag:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise WeightsNotFoundError(f"{source.filename}: its sha256 does not match the Hub's ({etag[:12]}...); removed")
    return path


def _transfer_error(err: BaseException) -> bool:
    """A failure of the network or the server (no route, refused, cut short, HTTP error), not a bug of ours."""
    module = type(err).__module__.split(".")[0]
    return isinstance(err, OSError) or module in ("httpx", "httpx2", "httpcore", "httpcore2", "h11", "huggingface_hub")


def _drop_incomplete(repo: str) -> None:
    """huggingface_hub keeps a failed transfer as ``blobs/*.incomplete`` (to resume it): never leave half a file."""
    blobs = hf_cache_dir() / f"models--{repo.replace('/', '--')}" / "blobs"
    for part in blobs.glob("*.incomplete"):
        part.unlink(missing_ok=True)


def _download_url(source: Source) -> Path:
    """A plain HTTP(S) transfer into torch hub's checkpoint folder, checked against Content-Length."""
    assert source.url is not None
    target = torch_hub_checkpoints() / source.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with urllib.request.urlopen(source.url, timeout=timeout()) as response, open(partial, "wb") as f:
            expected = response.headers.get("Content-Length")
            size = 0
            while chunk := response.read(1 << 20):
                f.write(chunk)
                size += len(chunk)
        if expected is not None and size != int(expected):
            raise WeightsNotFoundError(
                f"{source.filename}: the transfer from {source.url} stopped at {size} of {expected} bytes; nothing "
                f"was kept; try again or put the file at {target}"
            )
        os.replace(partial, target)
    except (urllib.error.URLError, OSError) as err:
        raise WeightsNotFoundError(
            f"{source.filename}: cannot download {source.url} ({_reason(err)}); put it at {target}"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return target


def _reason(err: BaseException) -> str:
    lines = str(getattr(err, "reason", None) or err).splitlines()
    return (lines[0] if lines else type(err).__name__)[:160]


def hf_config_folder(repo: str, download: bool) -> Path:
    """The local snapshot folder of Hub repo ``repo`` holding its config (``config.json``, or OpenCLIP's
    ``open_clip_config.json``), fetched with ``download``; a transformers repo's ``preprocessor_config.json`` comes
    with it. The weights are fetched afterwards (:func:`hf_weights`), once the config says a format vitreg reads."""
    configs = hub_configs()
    config = next((p for n in configs if (p := cached(Source(n, repo=repo))) is not None), None)
    if config is None and download:
        for name in configs:  # a transformers or timm repo has config.json, an OpenCLIP one the other
            try:
                config = fetch(Source(name, repo=repo))
                break
            except NotOnHub:
                continue
    if config is None:
        raise WeightsNotFoundError(
            f"hf:{repo}: its config.json is not in {hf_cache_dir()}; pass --download to fetch it, or "
            f"`huggingface-cli download {repo}`"
        )
    if download and config.name == "config.json" and cached(Source("preprocessor_config.json", repo=repo)) is None:
        with contextlib.suppress(NotOnHub):
            fetch(Source("preprocessor_config.json", repo=repo))
    return config.parent


def hf_weights(repo: str, names: tuple[str, ...], download: bool) -> Path:
    """The weights file of Hub repo ``repo``: the first of ``names`` in the HF cache, else (with ``download``) the
    first of them the Hub has."""
    hit = next((p for n in names if (p := cached(Source(n, repo=repo))) is not None), None)
    if hit is None:
        if not download:
            raise WeightsNotFoundError(f"hf:{repo}: {names[0]} is not in {hf_cache_dir()}; pass --download")
        hit = _first_on_hub(repo, names)
    if hit.name.endswith(SHARD_INDEX):  # a sharded repo: the shards its index names, cached or fetched
        _shards(repo, hit, download)
    return hit


def _first_on_hub(repo: str, names: tuple[str, ...]) -> Path:
    for name in names[:-1]:
        with contextlib.suppress(NotOnHub):
            return fetch(Source(name, repo=repo))
    return fetch(Source(names[-1], repo=repo))


def _shards(repo: str, index: Path, download: bool) -> None:
    """Every shard of a Hub repo's weights index, in the HF cache beside it (fetched with ``download``)."""
    import json

    try:
        names = sorted({str(v) for v in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise WeightsNotFoundError(f"hf:{repo}: {index.name} is not a shard index ({err})") from None
    for name in names:
        if cached(Source(name, repo=repo)) is None:
            if not download:
                raise WeightsNotFoundError(f"hf:{repo}: shard {name} is not in {hf_cache_dir()}; pass --download")
            fetch(Source(name, repo=repo))


def available() -> list[tuple[str, Path]]:
    """Every model name whose weights are on this machine (torch hub's checkpoints, the Hugging Face cache), whether
    or not vitreg reads its format (:func:`vitreg.models.load.checkpoints.available` keeps those it reads)."""
    from vitreg.models.presets import DINOV2_ALIASES

    found = [(a, p) for a, (_, f) in DINOV2_ALIASES.items() if (p := torch_hub_checkpoints() / f).is_file()]
    found += [(f"timm:{t}", p) for t, f in DEIT3_FILES.items() if (p := torch_hub_checkpoints() / f).is_file()]
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = scan_cache_dir(hf_cache_dir()).repos
    except CacheNotFound:
        repos = frozenset()
    for repo in repos:
        if repo.repo_type != "model":
            continue
        files = {f.file_name: f.file_path for rev in repo.revisions for f in rev.files}
        weights = next((files[n] for n in hub_weight_files() if n in files), None)
        if weights is None:
            continue
        if repo.repo_id.startswith("timm/"):
            found.append((f"timm:{repo.repo_id[len('timm/') :].split('.')[0]}", Path(weights)))
        elif any(c in files for c in hub_configs()):
            found.append((f"hf:{repo.repo_id}", Path(weights).parent))
    return sorted(found)
