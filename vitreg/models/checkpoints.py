"""Load and save model weights: safetensors, weights-only ``.pth``, timm checkpoints, original DINOv2 checkpoints.

Offline by design: nothing here touches the network. A named pretrained model whose weights are not on disk
fails at once with a message naming the file to provide (``--weights PATH``); it never falls back to random
weights unless ``random_init=True`` is asked for.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from vitreg import atomic
from vitreg.errors import CheckpointError, WeightsNotFoundError
from vitreg.models.presets import DINOV2_ALIASES, TIMM_PREFIX, ModelConfig, build_model, model_config

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model.json"


# --------------------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from training containers, with wrapper prefixes stripped.

    ``.pth``/``.pt``/``.bin`` go through ``torch.load(weights_only=True)``: a pickle that holds arbitrary Python
    objects is refused, never executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
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


# ------------------------------------------------------------------------------------- DINOv2 original layout
def is_dinov2_original(sd: dict[str, torch.Tensor]) -> bool:
    """DINOv2's own ``DinoVisionTransformer`` keys: ``mask_token`` and/or ``register_tokens``."""
    return "mask_token" in sd or "register_tokens" in sd


def convert_dinov2(sd: dict[str, torch.Tensor], no_embed_class: bool = True) -> dict[str, torch.Tensor]:
    """Original DINOv2 keys -> timm VisionTransformer keys.

    - ``register_tokens`` (1, R, C) -> ``reg_token``.
    - DINOv2 adds ``pos_embed[:, 0]`` to [CLS]; with ``no_embed_class`` (timm layout used for registers) that
      constant is folded into ``cls_token`` and ``pos_embed`` keeps only the patch grid (1, H*W, C).
    - chunked blocks ``blocks.<chunk>.<i>.`` -> ``blocks.<i>.`` (the index inside a chunk is already global).
    - SwiGLU ``mlp.w12`` / ``mlp.w3`` -> ``mlp.fc1`` / ``mlp.fc2`` (timm SwiGLUPacked).
    """
    sd = dict(sd)
    sd.pop("mask_token", None)
    out: dict[str, torch.Tensor] = {}
    if "register_tokens" in sd:
        out["reg_token"] = sd.pop("register_tokens")
    pos = sd.pop("pos_embed")
    cls = sd.pop("cls_token")
    if no_embed_class:
        out["cls_token"] = cls + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    else:
        out["cls_token"] = cls
        out["pos_embed"] = pos
    for k, v in sd.items():
        k = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)
        k = re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", k)
        k = re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)
        out[k] = v
    return out


# --------------------------------------------------------------------------------- config from weights alone
def infer_config(sd: dict[str, torch.Tensor], spec: str = "inferred") -> ModelConfig:
    """Architecture of a timm-layout state dict (heads assumed 64-dim, as in every DeiT/DINOv2 ViT)."""
    try:
        proj = sd["patch_embed.proj.weight"]  # (C, 3, p, p)
    except KeyError:
        raise CheckpointError("not a ViT checkpoint: no patch_embed.proj.weight") from None
    dim, patch = proj.shape[0], proj.shape[-1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    regs = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    has_cls = "cls_token" in sd
    n_pos = sd["pos_embed"].shape[1]
    grid = round(n_pos**0.5)
    if grid * grid != n_pos:  # pos_embed holds the [CLS] entry too: not the no_embed_class layout
        raise CheckpointError(
            "this checkpoint's position embedding includes the [CLS] token (no_embed_class=False); load it with "
            "--model timm:NAME naming its timm architecture"
        )
    fc1 = sd["blocks.0.mlp.fc1.weight"]  # (hidden, C) or (2*hidden, C) for packed SwiGLU
    fc2 = sd["blocks.0.mlp.fc2.weight"]  # (C, hidden)
    swiglu = fc1.shape[0] == 2 * fc2.shape[1]
    num_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    return ModelConfig(
        spec=spec,
        registers=regs,
        img_size=(grid * patch, grid * patch),
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=max(1, dim // 64),
        mlp_ratio=fc1.shape[0] / dim,
        mlp="swiglu" if swiglu else "mlp",
        init_values=1.0 if "blocks.0.ls1.gamma" in sd else None,  # the real gammas are loaded over this
        num_classes=num_classes,
        global_pool="map" if "attn_pool.latent" in sd else "avg" if "fc_norm.weight" in sd else "token",
        class_token=has_cls,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
    )


# ------------------------------------------------------------------------------------------ loading into a model
def adapt_state_dict(sd: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Convert a foreign layout and resample the position embedding to the model's grid (bicubic, antialiased)."""
    if is_dinov2_original(sd):
        sd = convert_dinov2(sd, no_embed_class=model.no_embed_class)
    pos = sd.get("pos_embed")
    if pos is not None and model.pos_embed is not None and pos.shape != model.pos_embed.shape:
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        old = round((pos.shape[1] - prefix) ** 0.5)
        sd = dict(sd)
        sd["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(model.patch_embed.grid_size), old_size=[old, old], num_prefix_tokens=prefix
        )
    return sd


def load_weights(model: VisionTransformer, sd: dict[str, torch.Tensor], source: str) -> VisionTransformer:
    sd = adapt_state_dict(sd, model)
    own = model.state_dict()
    if "head.weight" in sd and ("head.weight" not in own or own["head.weight"].shape != sd["head.weight"].shape):
        # A classifier for another label set (or none asked for): the backbone is what matters here.
        log.info("%s: dropping its classifier head (%s)", source, tuple(sd["head.weight"].shape))
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    missing, unexpected = [], []
    for k in own:
        if k not in sd and not k.startswith("head."):
            missing.append(k)
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
        raise CheckpointError(f"{source}: weights do not fit the model: {'; '.join(details)}")
    model.load_state_dict(sd, strict=False)
    return model


def _pretrained_file_hint(cfg: ModelConfig) -> str:
    name = cfg.spec[len(TIMM_PREFIX) :] if cfg.is_timm else cfg.spec
    for alias, (timm_name, fname) in DINOV2_ALIASES.items():
        if timm_name == name:
            return f"{fname} (the original DINOv2 checkpoint, alias {alias})"
    return f"the weights of {cfg.spec} (a .safetensors or weights-only .pth file)"


def _cached_timm_weights(cfg: ModelConfig) -> Path | None:
    """Weights of a timm model already in the local Hugging Face cache; never a network call."""
    if not cfg.is_timm:
        return None
    import timm

    pcfg = timm.models.get_pretrained_cfg(cfg.spec[len(TIMM_PREFIX) :])
    repo = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, fname)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def load_model(
    path_or_spec: str | Path,
    *,
    weights: str | Path | None = None,
    registers: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    random_init: bool = False,
    **overrides: Any,
) -> VisionTransformer:
    """A ready model from a run directory, a weights file, or a named spec with ``weights``.

    - directory: ``model.json`` + ``model.safetensors`` written by :func:`save_model`;
    - file: safetensors / weights-only .pth / timm / original DINOv2 checkpoint (architecture from a JSON sidecar
      or inferred from the keys);
    - spec (preset, ``timm:NAME``, DINOv2 alias): its architecture, with ``weights`` (or a timm model's weights
      already in the local cache); ``random_init=True`` asks for random weights on purpose.
    """
    path = Path(str(path_or_spec))
    if path.is_dir():
        cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not cfg_path.is_file() or not w_path.is_file():
            raise CheckpointError(f"{path}: a model directory needs {CONFIG_NAME} and {WEIGHTS_NAME}")
        cfg = _read_config(cfg_path)
        return _finish(cfg, read_state_dict(w_path), str(w_path), registers, img_size, overrides)
    if path.is_file() or path.suffix in (".safetensors", ".pth", ".pt", ".bin"):
        sd = read_state_dict(path)
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            cfg = _read_config(sidecar)
        else:
            if is_dinov2_original(sd):
                sd = convert_dinov2(sd)
            cfg = infer_config(sd, spec=f"file:{path.name}")
        return _finish(cfg, sd, str(path), registers, img_size, overrides)

    cfg = model_config(str(path_or_spec), registers=registers, img_size=img_size, **overrides)
    source = _spec_weights(cfg, path_or_spec, weights, random_init)
    model = build_model(cfg)
    return model if source is None else load_weights(model, read_state_dict(source), str(source))


def _spec_weights(cfg: ModelConfig, spec: str | Path, weights: str | Path | None, random_init: bool) -> Path | None:
    """Where a named model's weights come from (None: random on purpose); WeightsNotFoundError when nowhere."""
    if weights is not None:
        if not Path(weights).is_file():
            raise CheckpointError(f"checkpoint not found: {weights}")
        return Path(weights)
    if random_init:
        return None
    cached = _cached_timm_weights(cfg)
    if cached is not None:
        return cached
    raise WeightsNotFoundError(
        f"no weights on disk for {str(spec)!r}. Provide {_pretrained_file_hint(cfg)} with --weights PATH "
        f"(API: weights=PATH), or pass --random-init to use random weights on purpose. vitreg never downloads."
    )


def check_model(
    path_or_spec: str | Path,
    *,
    weights: str | Path | None = None,
    registers: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    random_init: bool = False,
) -> None:
    """Raise what :func:`load_model` would raise for a missing file, an unknown name or missing weights, without
    building the model or reading the weights (so every model of a run is checked before any work)."""
    path = Path(str(path_or_spec))
    if path.is_dir():
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise CheckpointError(f"{path}: a model directory needs {CONFIG_NAME} and {WEIGHTS_NAME}")
        _read_config(path / CONFIG_NAME)
        return
    if path.is_file() or path.suffix in (".safetensors", ".pth", ".pt", ".bin"):
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        return
    cfg = model_config(str(path_or_spec), registers=registers, img_size=img_size)
    _spec_weights(cfg, path_or_spec, weights, random_init)


def _read_config(path: Path) -> ModelConfig:
    # every value checked against its type and range, and the architecture built on the meta device, so a hostile
    # sidecar ("depth": "twelve") is a CheckpointError naming the file and key, never a traceback from timm
    from vitreg.models.sidecar import read_model_config

    return read_model_config(path)


def _finish(
    cfg: ModelConfig,
    sd: dict[str, torch.Tensor],
    source: str,
    registers: int | None,
    img_size: Any,
    overrides: dict[str, Any],
) -> VisionTransformer:
    if registers is not None and registers != cfg.registers:
        raise CheckpointError(f"{source} was trained with {cfg.registers} registers; cannot load it with {registers}")
    if img_size is not None:
        cfg.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    for k, v in overrides.items():
        if v is None:
            continue
        if not hasattr(cfg, k):
            raise CheckpointError(f"unknown model option {k!r}")
        setattr(cfg, k, v)
    return load_weights(build_model(cfg), sd, source)


def save_model(model: VisionTransformer, directory: str | Path) -> Path:
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
