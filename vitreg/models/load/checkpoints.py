"""Load models by name or path: presets, ``timm:`` names, DINOv2 names, ``openclip:``, ``torchvision:``, ``hf:`` repos,
zoo entries, model folders and weights files, each read by its format (the registry :mod:`vitreg.models.load.formats`;
weights-only: a pickle of other Python objects is refused, never run).

:func:`resolve` matches a spec to its format once and returns what it resolved (:class:`~vitreg.models.load.formats.
Resolved`: the architecture, the weights file, the format and the layout of its weights); loading builds that and
re-guesses nothing. Registers, image size and options are honoured or refused the same way for every kind of spec:
a named architecture takes them; files that hold their own weights take an image size (the position embedding is
resampled) and options, and refuse another number of registers, ``--weights`` and ``--random-init``.

Nothing is downloaded unless asked (``download=True``, ``--download``): a named model whose weights are not in the
ecosystem's caches fails at once with a message naming the file to provide, where vitreg looks for it, and the flags
(``--weights PATH``, ``--download``). It never falls back to random weights unless ``random_init=True`` is asked for.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch.nn as nn

from vitreg.errors import CheckpointError, ConfigError, VitregError, WeightsNotFoundError
from vitreg.models.load import formats, hub, zoo
from vitreg.models.load.formats import Resolved

# read_state_dict, load_weights and save_model are this module's API too (their home is modelfile)
from vitreg.models.load.modelfile import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    build_loaded,
    file_config,
    load_weights,
    read_state_dict,
    save_model,
)
from vitreg.models.presets import DINOV2_ALIASES, MAX_REGISTERS, TIMM_PREFIX, ModelConfig

__all__ = [
    "CONFIG_NAME",
    "HF_PREFIX",
    "WEIGHTS_NAME",
    "architecture",
    "available",
    "check_model",
    "load_model",
    "load_weights",
    "read_state_dict",
    "resolve",
    "save_model",
    "weight_sources",
]

HF_PREFIX = "hf:"


# --------------------------------------------------------------------------------------- where weights come from
def weight_sources(spec: str, cfg: ModelConfig) -> list[hub.Source]:
    """The published files of a named model, the original publisher's first."""
    sources = []
    if spec in DINOV2_ALIASES:
        sources.append(hub.dinov2_source(spec.removesuffix("_reg"), DINOV2_ALIASES[spec][1]))
    if cfg.is_timm:
        import timm

        name = cfg.spec[len(TIMM_PREFIX) :]
        deit3 = hub.deit3_source(name)
        if deit3 is not None:
            sources.append(deit3)
        pcfg = timm.models.get_pretrained_cfg(name)
        repo = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
        if repo:
            sources += [hub.Source(f, repo=repo) for f in formats.base.HUB_WEIGHTS]
    return sources


def _spec_weights(
    cfg: ModelConfig, spec: str | Path, weights: str | Path | None, random_init: bool, download: bool
) -> Path | None:
    """Where a named model's weights come from (None: random on purpose); WeightsNotFoundError when nowhere."""
    if weights is not None:
        if not Path(weights).is_file():
            raise CheckpointError(f"{weights}: no such file or folder (--weights)")
        return Path(weights)
    if random_init:
        return None
    sources = weight_sources(str(spec), cfg)
    hit = next((p for s in sources if (p := hub.cached(s)) is not None), None)
    if hit is not None:
        return hit
    if download and sources:
        return hub.fetch(sources[0])
    where = f"; or pass --download to fetch {sources[0].filename}" if sources else ""
    raise WeightsNotFoundError(
        f"no weights on disk for {str(spec)!r}. Provide {_pretrained_file_hint(cfg, sources)} with --weights PATH "
        f"(API: weights=PATH){where}, or pass --random-init to use random weights on purpose."
    )


def _pretrained_file_hint(cfg: ModelConfig, sources: list[hub.Source]) -> str:
    if sources:
        return f"{sources[0].filename} (vitreg looks for it in {sources[0].where})"
    return f"the weights of {cfg.spec} (a .safetensors or weights-only .pth file)"


# ---------------------------------------------------------------------------------- registers, size and options
def _apply_options(
    cfg: ModelConfig, what: str, registers: int | None, img_size: Any, overrides: dict[str, Any], trained: bool
) -> None:
    """Registers, image size and options on an architecture that its files (or a name without options) fixed:
    another number of registers is refused when the weights were trained with theirs; the image size is honoured
    (the position embedding is resampled when the weights are loaded); options must be fields of ModelConfig."""
    if registers is not None and registers != cfg.registers:
        if trained:
            raise CheckpointError(
                f"{what} was trained with {cfg.registers} registers; cannot load it with {registers} (registers are "
                "trained with the model; `vitreg fix` adds test-time registers to a released one)"
            )
        if not 0 <= registers <= MAX_REGISTERS:
            raise ConfigError(f"registers must be between 0 and {MAX_REGISTERS}, got {registers}")
        cfg.registers = int(registers)
    if img_size is not None:
        cfg.img_size = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
    known = {f.name for f in dataclasses.fields(ModelConfig)} - {"spec", "registers", "img_size"}
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in known:
            raise ConfigError(f"{what}: unknown model option {k!r}; allowed: {', '.join(sorted(known))}")
        setattr(cfg, k, v)


def _check_patch_multiple(cfg: ModelConfig, spec: str, asked: Any) -> None:
    h, w = cfg.img_size
    p = cfg.patch_size
    if h % p or w % p:
        near = f"{max(p, round(h / p) * p)}x{max(p, round(w / p) * p)}"
        said = "--img-size" if asked is not None else "its image size"
        raise ConfigError(f"{spec}: {said} {h}x{w} is not a multiple of its patch size {p} (e.g. {near})")


def _own_weights(r: Resolved, what: str, weights: Any, random_init: bool) -> None:
    """Files that hold their own weights take neither --weights nor --random-init."""
    if weights is not None:
        raise ConfigError(
            f"--weights {weights}: {what} holds its own weights ({r.format.accepted}); --weights goes "
            "with a named architecture"
        )
    if random_init:
        raise ConfigError(
            f"--random-init: {what} holds its own weights ({r.weights}) and would not be random; for random weights "
            f"name its architecture instead (its model.json's spec, a preset or timm:NAME)"
        )


# -------------------------------------------------------------------------------------------------- the API
def resolve(
    spec: str | Path,
    *,
    weights: str | Path | None = None,
    registers: int | None = None,
    img_size: Any = None,
    random_init: bool = False,
    download: bool = False,
    overrides: dict[str, Any] | None = None,
    architecture_only: bool = False,
    weights_key: str | None = None,
) -> Resolved:
    """What ``spec`` is, without building or reading anything large: its architecture, the file its weights come
    from (None: random init), its format and the layout of its weights; or the error :func:`load_model` would raise.
    ``architecture_only``: only the architecture is wanted (FLOP counts): no weights are looked for."""
    text = str(spec)
    overrides = dict(overrides or {})
    r = _resolve_files(text, download, architecture_only)
    if r is not None:
        if not architecture_only:
            _own_weights(r, text, weights, random_init)
        _apply_options(r.config, text, registers, img_size, overrides, trained=not architecture_only)
    else:
        fmt = formats.name_format(text)
        if fmt is None:
            _unknown(text)
        assert fmt is not None
        opts = (registers, img_size, overrides) if fmt.name_options else (None, None, {})
        r = formats.read_name(fmt, text, *opts)
        if not fmt.name_options:
            _apply_options(r.config, text, registers, img_size, overrides, trained=weights is not None)
        if not architecture_only:
            r.weights = _spec_weights(r.config, text, weights, random_init, download)
    _check_patch_multiple(r.config, text, img_size)
    if weights_key is not None:
        if r.weights is None or r.weights.suffix not in formats.base.CHECKPOINT_SUFFIXES:
            raise ConfigError(
                f"--weights-key {weights_key}: takes a key of a .pth/.pt/.bin/.ckpt checkpoint, and {text} has none"
            )
        r.weights_key = weights_key
    if r.format.key == "delta" and not architecture_only:
        r.base = _delta_base(r, img_size, download)
    return r


def _delta_base(r: Resolved, img_size: Any, download: bool) -> Resolved:
    """A delta's base, resolved by its own format at the delta's size (or ``img_size``), its weights checked against
    the sha256 the delta recorded."""
    from vitreg.models.load.delta import read_delta
    from vitreg.models.load.filecheck import sha256_file

    assert r.weights is not None
    folder = r.weights.parent
    delta = read_delta(folder)
    size = img_size if img_size is not None else delta.base.img_size
    base = resolve(delta.base.spec, img_size=size, download=download)
    if base.weights is None:
        raise CheckpointError(f"{folder}: its base {delta.base.spec} resolved to no weights file")
    got = (zoo.get(delta.base.spec).sha256 if delta.base.spec.startswith(zoo.ZOO_PREFIX) else "") or sha256_file(
        base.weights
    )
    if got != delta.base.sha256:
        raise CheckpointError(
            f"{folder}: made from {delta.base.spec} with weights sha256 {delta.base.sha256[:16]}..., but that spec "
            f"now gives {got[:16]}... ({base.weights}): the delta only fits the weights it was made from"
        )
    return base


def _resolve_files(text: str, download: bool, architecture_only: bool) -> Resolved | None:
    """A zoo entry, an ``hf:`` repo, a folder or a file, read by its format (None: ``text`` is a name)."""
    if text.startswith(zoo.ZOO_PREFIX):  # a zoo entry: its weights are checked against their sha256 first
        entry = zoo.get(text)
        if architecture_only and (entry.files / CONFIG_NAME).is_file():
            return formats.Resolved(
                formats.read_sidecar(entry.files / CONFIG_NAME), None, formats.by_key("vitreg"), None
            )
        if download and not entry.fetched:
            entry.fetch()
        weights_file = entry.verify()  # before its model.json: a package entry not fetched says what to run
        found = formats.read_folder(entry.files)
        found.weights = weights_file
        return found
    if text.startswith(HF_PREFIX):
        return _hf_repo(text, download, architecture_only)
    path = Path(text).expanduser()
    if path.is_dir() or path.is_file():
        return file_config(path)
    suffixes = (*formats.base.WEIGHT_SUFFIXES, *(x for f in formats.FORMATS for x in f.suffixes))
    looks_like_a_path = path.suffix in suffixes or "/" in text or text.startswith((".", "~"))
    if looks_like_a_path and formats.name_format(text) is None:
        raise CheckpointError(f"{text}: no such file or folder")
    return None


def _hf_repo(text: str, download: bool, architecture_only: bool) -> Resolved:
    """An ``hf:`` repo: its config first (fetched with ``download``), checked against the registry before any
    weights are fetched; then its weights, found in the HF cache or fetched."""
    repo = text[len(HF_PREFIX) :]
    folder = hub.hf_config_folder(repo, download)
    fmt, cfg = formats.folder_config(folder)  # a model_type vitreg does not read is refused here, nothing fetched
    if not cfg.is_timm:
        cfg.spec = text
    if architecture_only:
        return formats.Resolved(cfg, None, fmt, fmt.layout)
    weights = hub.hf_weights(repo, fmt.weight_files, download)
    return formats.Resolved(cfg, weights, fmt, fmt.layout)


def _unknown(text: str) -> None:
    from vitreg.models.presets import model_config

    model_config(text)  # raises ConfigError naming the presets, timm: and the DINOv2 names
    raise ConfigError(f"unknown model {text!r}")  # pragma: no cover (model_config knows every name it accepts)


def architecture(
    spec: str | Path, *, registers: int | None = None, img_size: Any = None, download: bool = False
) -> ModelConfig:
    """The architecture of ``spec`` alone (no weights looked for or read: they never change a FLOP count)."""
    return resolve(spec, registers=registers, img_size=img_size, download=download, architecture_only=True).config


def load_model(
    path_or_spec: str | Path,
    *,
    weights: str | Path | None = None,
    registers: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    random_init: bool = False,
    download: bool = False,
    weights_key: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """A ready model from a model folder, a weights file with its sidecar, or a named architecture.

    - folders and files: the formats of the registry :mod:`vitreg.models.load.formats` (vitreg's run directory, the
      transformers families, OpenCLIP, timm, ONNX exports), each loaded weights-only;
    - ``zoo:NAME``: an entry of the package's model zoo (:mod:`vitreg.models.load.zoo`), its sha256 checked;
    - names: a preset, ``timm:NAME``, a DINOv2 name, ``openclip:ARCH``, ``torchvision:NAME``, or ``hf:REPO`` (a Hub
      repo in one of the folder formats), with ``weights=FILE`` (any layout of the registry, told by its keys) or
      the published weights found in the ecosystem's caches (:mod:`vitreg.models.load.hub`), downloaded first with
      ``download=True``; ``random_init=True`` asks for random weights on purpose.
    """
    r = resolve(
        path_or_spec,
        weights=weights,
        registers=registers,
        img_size=img_size,
        random_init=random_init,
        download=download,
        overrides=overrides,
        weights_key=weights_key,
    )
    return build_loaded(r)


def check_model(
    path_or_spec: str | Path,
    *,
    weights: str | Path | None = None,
    registers: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    random_init: bool = False,
    download: bool = False,
    weights_key: str | None = None,
) -> None:
    """Raise what :func:`load_model` would raise for a missing file, an unknown name or missing weights, without
    building the model, so every model of a run is checked before any work (with ``download``, fetching its files
    is part of the check)."""
    resolve(
        path_or_spec,
        weights=weights,
        registers=registers,
        img_size=img_size,
        random_init=random_init,
        download=download,
        weights_key=weights_key,
    )


def available() -> list[tuple[str, Path]]:
    """The named models whose weights are on this machine and that vitreg reads (a Hub repo in a format it does
    not read, or a timm model that is no ViT, is left out)."""
    found = []
    for name, path in hub.available():
        try:
            if name.startswith(HF_PREFIX):
                formats.folder_config(path)
            else:
                architecture(name)
        except VitregError:
            continue
        found.append((name, path))
    return found
