"""Load and save models: every format of :mod:`vitreg.models.formats`, weights-only (safetensors, or
``torch.load(weights_only=True)``: a pickle of other Python objects is refused, never run).

Nothing is downloaded unless asked (``download=True``, ``--download``): a named model whose weights are not in the
ecosystem's caches fails at once with a message naming the file to provide, where vitreg looks for it, and the flags
(``--weights PATH``, ``--download``). It never falls back to random weights unless ``random_init=True`` is asked for.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file

from vitreg import atomic
from vitreg.errors import CheckpointError, WeightsNotFoundError
from vitreg.models import hub, zoo
from vitreg.models.convert import to_model_layout
from vitreg.models.formats import (
    ACCEPTED,
    OPENCLIP_PREFIX,
    candidates,
    onnx_config,
    openclip_named_config,
    read_folder,
    read_sidecar,
    shape_summary,
)
from vitreg.models.presets import DINOV2_ALIASES, TIMM_PREFIX, ModelConfig, build_model, model_config

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model.json"
HF_PREFIX = "hf:"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".onnx")


# --------------------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from training containers, with wrapper prefixes stripped.

    ``.pth``/``.pt``/``.bin`` go through ``torch.load(weights_only=True)``: a pickle that holds arbitrary Python
    objects is refused, never executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".onnx":  # the graph's initialisers (int8 dequantised), in transformers CLIP's keys
        from vitreg.models.onnx_clip import read_onnx_clip

        return read_onnx_clip(path).state_dict
    if path.suffix == ".safetensors":
        from vitreg.models.filecheck import check_safetensors_header

        check_safetensors_header(path)  # a header length that lies is refused before the library allocates it
        try:
            raw: Any = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({' '.join(str(err).split())})") from err
    else:
        import io
        import zipfile

        try:
            # a legacy (pre-zip) file is unpickled from memory: a corrupt length field then reads at most what the
            # file holds, where reading from the file object would first allocate the length it claims
            source: Any = str(path) if zipfile.is_zipfile(path) else io.BytesIO(path.read_bytes())
            raw = torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects other than weights, and vitreg only loads "
                f"weights (torch.load weights_only=True). Re-save its state_dict, or convert it to safetensors. "
                f"Detail: {str(err).splitlines()[0]}"
            ) from err
        except Exception as err:
            detail = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"  # torch's messages span lines
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail})") from err
    sd = _unwrap(raw, path)
    return _strip_prefixes(sd)


def _unwrap(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    # Training checkpoints nest the weights: DINOv2 keeps {"teacher": {"backbone.*": ...}}, timm/DeiT {"model": ...}.
    if isinstance(raw, dict):
        for key in ("teacher", "model_ema", "model", "state_dict", "module"):
            inner = raw.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                raw = inner
                break
    if not isinstance(raw, dict) or not raw:
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    return tensors


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "_orig_mod.", "backbone.", "model."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in sd):  # DINOv2 teacher: keep the backbone, drop the heads
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


# ------------------------------------------------------------------------------------------ loading into a model
def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``sd`` (any layout :mod:`vitreg.models.convert` knows) into ``model``; every tensor must fit."""
    sd = to_model_layout(sd, model)
    own = model.state_dict()
    if "head.weight" in sd and ("head.weight" not in own or own["head.weight"].shape != sd["head.weight"].shape):
        # A classifier (or a CLIP projection) for another purpose: the backbone is what matters here.
        log.info("%s: dropping its head (%s)", source, tuple(sd["head.weight"].shape))
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    missing = [k for k in own if k not in sd and not k.startswith("head.")]
    unexpected = [k for k in sd if k not in own]
    shape_bad = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or shape_bad:
        details = []
        if missing:
            details.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        if shape_bad:
            k = shape_bad[0]
            details.append(f"shape mismatch for {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError(f"{source}: weights do not fit the model: {'; '.join(details)}; accepted: {ACCEPTED}")
    model.load_state_dict(sd, strict=False)
    return model


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
            sources += [hub.Source(f, repo=repo) for f in hub.HF_FILES]
    return sources


def _spec_weights(
    cfg: ModelConfig, spec: str | Path, weights: str | Path | None, random_init: bool, download: bool
) -> Path | None:
    """Where a named model's weights come from (None: random on purpose); WeightsNotFoundError when nowhere."""
    if weights is not None:
        if not Path(weights).is_file():
            raise CheckpointError(f"checkpoint not found: {weights}")
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


def _bare_file(path: Path) -> CheckpointError:
    """A weights file that does not say its architecture: refused, with the names that fit its shapes."""
    sd = read_state_dict(path)
    names = candidates(sd)
    fits = f" (architectures of this width, depth and patch: {', '.join(names)})" if names else ""
    return CheckpointError(
        f"{path}: a weights file without a {path.with_suffix('.json').name} sidecar does not say its architecture "
        f"({shape_summary(sd)}); pass --model ARCH --weights {path}{fits}"
    )


# -------------------------------------------------------------------------------------------------- the API
def resolve(
    spec: str | Path,
    *,
    weights: str | Path | None,
    registers: int | None,
    img_size: Any,
    random_init: bool,
    download: bool,
    overrides: dict[str, Any],
) -> tuple[ModelConfig, Path | None]:
    """The architecture of ``spec`` and the file its weights come from (None: random init), without building or
    reading anything large: what :func:`load_model` would load, or the error it would raise."""
    text = str(spec)
    path = Path(text)
    if text.startswith(zoo.ZOO_PREFIX):  # a zoo entry: its weights are checked against their sha256 first
        entry = zoo.get(text)
        if download and not entry.fetched:
            entry.fetch()
        weights_file = entry.verify()  # before its model.json: a package entry not fetched says what to run
        return read_sidecar(entry.files / CONFIG_NAME), weights_file
    if text.startswith(HF_PREFIX):
        path = hub.hf_folder(text[len(HF_PREFIX) :], download)
    if path.is_dir():
        cfg, file = read_folder(path)
        if text.startswith(HF_PREFIX):
            cfg.spec = text
        return cfg, file
    if path.is_file() or path.suffix in WEIGHT_SUFFIXES:
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        if path.suffix == ".onnx":
            return onnx_config(path), path
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise _bare_file(path)
        return read_sidecar(sidecar), path
    if text.startswith(OPENCLIP_PREFIX):
        cfg = openclip_named_config(text)
        if weights is None and not random_init:
            raise WeightsNotFoundError(f"{text}: give its weights with --weights (open_clip_model.safetensors or .bin)")
        return cfg, None if random_init else Path(weights)  # type: ignore[arg-type]
    cfg = model_config(text, registers=registers, img_size=img_size, **overrides)
    return cfg, _spec_weights(cfg, text, weights, random_init, download)


def load_model(
    path_or_spec: str | Path,
    *,
    weights: str | Path | None = None,
    registers: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    random_init: bool = False,
    download: bool = False,
    **overrides: Any,
) -> nn.Module:
    """A ready model from a model folder, a weights file with its sidecar, or a named architecture.

    - folders and files: the formats of :mod:`vitreg.models.formats` (vitreg's run directory, transformers DINOv2,
      OpenCLIP, timm), each loaded weights-only;
    - ``zoo:NAME``: an entry of the package's model zoo (:mod:`vitreg.models.zoo`), its sha256 checked;
    - names: a preset, ``timm:NAME``, a DINOv2 name, ``openclip:ARCH``, or ``hf:REPO`` (a Hub repo in one of the
      folder formats), with ``weights=FILE`` (any layout :mod:`vitreg.models.convert` knows) or the published weights
      found in the ecosystem's caches (:mod:`vitreg.models.hub`), downloaded first with ``download=True``;
      ``random_init=True`` asks for random weights on purpose.
    """
    cfg, file = resolve(path_or_spec, weights=weights, registers=registers, img_size=img_size,
                        random_init=random_init, download=download, overrides=overrides)  # fmt: skip
    text = str(path_or_spec)
    named = not Path(text).exists() and not text.startswith((HF_PREFIX, zoo.ZOO_PREFIX))
    if not named:
        if registers is not None and registers != cfg.registers:
            raise CheckpointError(f"{file} was trained with {cfg.registers} registers; cannot load it with {registers}")
        if img_size is not None:
            cfg.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)  # type: ignore[assignment]
        for k, v in overrides.items():
            if v is None:
                continue
            if not hasattr(cfg, k):
                raise CheckpointError(f"unknown model option {k!r}")
            setattr(cfg, k, v)
    model = build_model(cfg)
    return model if file is None else load_weights(model, read_state_dict(file), str(file))


def check_model(
    path_or_spec: str | Path,
    *,
    weights: str | Path | None = None,
    registers: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    random_init: bool = False,
    download: bool = False,
) -> None:
    """Raise what :func:`load_model` would raise for a missing file, an unknown name or missing weights, without
    building the model, so every model of a run is checked before any work (with ``download``, fetching its files
    is part of the check)."""
    resolve(path_or_spec, weights=weights, registers=registers, img_size=img_size, random_init=random_init,
            download=download, overrides={})  # fmt: skip


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model.safetensors`` + ``model.json`` so ``load_model(directory)`` re-creates the model alone."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig | None = getattr(model, "vitreg_config", None)
    if cfg is None:
        raise CheckpointError("this model was not built by vitreg (no vitreg_config); build it with create_model")
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic.write_safetensors(directory / WEIGHTS_NAME, sd, metadata={"format": "pt"})
    atomic.write_json(directory / CONFIG_NAME, cfg.to_json())
    return directory
