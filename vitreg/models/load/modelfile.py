"""One model's files, read and written: a checkpoint's state dict (safetensors, or ``torch.load(weights_only=True)``:
a pickle of other Python objects is refused, never run), a model folder or a weights file that states its
architecture (the registry :mod:`vitreg.models.load.formats`), the weights loaded through their format's layout, and
:func:`save_model`'s ``model.safetensors`` + ``model.json``.

Names are not resolved here (presets, zoo entries, published weights: :mod:`vitreg.models.load.checkpoints`), so the
zoo's conversion of a released file (:mod:`vitreg.models.load.zoo_package`) reads it without the spec resolver that
itself fetches zoo entries.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file

from vitreg import atomic
from vitreg.errors import CheckpointError
from vitreg.models.load import formats
from vitreg.models.load.formats import Layout, Resolved
from vitreg.models.load.formats.vitreg_dir import CONFIG_NAME, WEIGHTS_NAME
from vitreg.models.presets import PRESETS, build_model, config_of

log = logging.getLogger(__name__)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "build_loaded",
    "file_config",
    "load_weights",
    "read_state_dict",
    "save_model",
]
PATCH_KEYS = (
    "patch_embed.proj.weight",
    "conv1.weight",
    "conv_proj.weight",
    "projection.weight",
    "patch_embedding.weight",
)
BLOCK_KEY = re.compile(r"(?:blocks|resblocks|layers?)\.(?:encoder_layer_)?(\d+)\.")


# --------------------------------------------------------------------------------------------------- reading
#: Where training checkpoints keep their weights, in the order they are taken: DINOv2's released "teacher", then the
#: plain weights, then an exponential moving average only when there are no plain weights (timm's rule: the EMA is
#: taken on request). ``--weights-key KEY`` (API: ``weights_key=``) takes another.
WEIGHT_KEYS = ("teacher", "model", "state_dict", "module", "model_ema", "state_dict_ema", "ema")


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from training containers (the first of :data:`WEIGHT_KEYS` that holds
    tensors, or ``key``), with wrapper prefixes stripped; which one was taken is logged.

    ``.pth``/``.pt``/``.bin`` go through ``torch.load(weights_only=True)``: a pickle that holds arbitrary Python
    objects is refused, never executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or folder")
    fmt = formats.file_format(path)
    if fmt is not None and fmt.read_weights is not None:  # the format's own reader (an ONNX graph's initialisers)
        return fmt.read_weights(path)
    if path.name.endswith(formats.base.SHARD_INDEX):  # a sharded checkpoint: every shard its index names, merged
        return _strip_prefixes(_read_shards(path, key))
    return _strip_prefixes(_read_tensors(path, key))


def _read_tensors(path: Path, key: str | None) -> dict[str, torch.Tensor]:
    """The tensors of one checkpoint file, unwrapped from its training container (prefixes kept)."""
    if path.suffix == ".safetensors":
        from vitreg.models.load.filecheck import check_safetensors_header

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
    return _unwrap(raw, path, key)


def shard_files(index: Path) -> list[Path]:
    """The shards a ``*.index.json`` names (its ``weight_map`` values), each checked to be a plain file name beside
    it: an index is read from wherever the weights came from and must not point elsewhere."""
    import json

    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{index}: not a readable shard index ({err})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: a shard index needs a non-empty 'weight_map' of tensor -> shard file")
    names = sorted({str(v) for v in weight_map.values()})
    bad = [n for n in names if Path(n).name != n or n.startswith(".")]
    if bad:
        raise CheckpointError(f"{index}: shard {bad[0]!r} is not a file name beside the index")
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise CheckpointError(f"{index}: {len(missing)} of its {len(names)} shards are missing (e.g. {missing[0]})")
    return [index.parent / n for n in names]


def _read_shards(index: Path, key: str | None) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for shard in shard_files(index):
        part = _read_tensors(shard, key)
        clash = sorted(set(part) & set(sd))
        if clash:
            raise CheckpointError(f"{index}: tensor {clash[0]!r} is in more than one shard")
        sd.update(part)
    return sd


def _holds_tensors(value: Any) -> bool:
    return isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values())


def _unwrap(raw: Any, path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    # Training checkpoints nest the weights: DINOv2 keeps {"teacher": {"backbone.*": ...}}, timm/DeiT {"model": ...},
    # Lightning {"state_dict": {"model.*": ...}}; several of them may sit side by side (model and model_ema)
    if isinstance(raw, dict):
        nested = [k for k, v in raw.items() if isinstance(k, str) and _holds_tensors(v)]
        if key is not None:
            if key not in nested:
                where = f"its keys holding weights: {', '.join(nested)}" if nested else "it holds no nested weights"
                raise CheckpointError(f"{path}: --weights-key {key!r} not found ({where})")
            raw = raw[key]
        else:
            taken = next((k for k in WEIGHT_KEYS if k in nested), None)
            if taken is not None:
                others = [k for k in nested if k != taken]
                also = (
                    f"; it also holds {', '.join(repr(k) for k in others)} (--weights-key KEY takes one)"
                    if others
                    else ""
                )
                log.info("%s: took the weights under %r%s", path, taken, also)
                raw = raw[taken]
    elif key is not None:
        raise CheckpointError(f"{path}: --weights-key {key!r}: the file is not a mapping of keys")
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
def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], source: str, layout: Layout | None = None) -> nn.Module:
    """Load ``sd`` into ``model`` through ``layout`` (its format's; None: the layout its keys say, from the
    registry); every tensor must fit."""
    layout = layout or formats.layout_of(sd)
    try:
        sd = layout.to_timm(sd, model)
    except (RuntimeError, ValueError, KeyError, IndexError) as err:  # timm's filter: shapes that cannot be converted
        detail = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"{source}: weights ({layout.name} layout) do not fit the model: {detail}{_name_clash(model)}"
        ) from None
    own = model.state_dict()
    if "head.weight" in sd and ("head.weight" not in own or own["head.weight"].shape != sd["head.weight"].shape):
        # A classifier for another purpose: the backbone is what matters here.
        log.debug("%s: leaving out its classifier (%s)", source, tuple(sd["head.weight"].shape))
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    missing = [k for k in own if k not in sd and not k.startswith(("head.", "head_dist."))]
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
        raise CheckpointError(
            f"{source}: weights ({layout.name} layout) do not fit the model: {'; '.join(details)}{_name_clash(model)}"
        )
    model.load_state_dict(sd, strict=False)
    return model


def _name_clash(model: nn.Module) -> str:
    """A hint when the model is a vitreg preset whose name timm also has (the same size, another layout: vitreg's
    presets keep [CLS] out of the position table and may carry registers), or timm's model of a preset's name."""
    import timm

    cfg = getattr(model, "vitreg_config", None)
    if cfg is None:
        return ""
    name = cfg.spec.removeprefix("timm:")
    if cfg.is_timm and name in PRESETS:
        return f"; timm:{name} is timm's model; vitreg's preset {name} (another layout) is --model {name}"
    if not cfg.is_timm and name in PRESETS and timm.is_model(name):
        return (
            f"; --model {name} is vitreg's preset (its own layout: [CLS] outside the position table); "
            f"for timm's model of that name pass --model timm:{name}"
        )
    return "; see `vitreg models --formats` for what loads"


def file_config(path: Path) -> Resolved:
    """The architecture a model folder or a weights file states, the file its weights are in, its format and
    layout (:mod:`vitreg.models.load.formats`); a bare weights file is refused, naming the architectures its shapes
    fit."""
    if path.is_dir():
        return formats.read_folder(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or folder")
    found = formats.read_file(path)
    if found is None:
        raise _bare_file(path)
    return found


def build_loaded(resolved: Resolved) -> nn.Module:
    """The model ``resolved`` describes, with the weights of its file (random weights when None); a delta: its base
    loaded by its own format, then the delta applied."""
    if resolved.base is not None:
        from vitreg.models.load.delta import apply_delta, read_delta

        assert resolved.weights is not None
        folder = resolved.weights.parent
        return apply_delta(build_loaded(resolved.base), folder, read_delta(folder))
    model = build_model(resolved.config)
    if resolved.weights is None:
        return model
    sd = read_state_dict(resolved.weights, resolved.weights_key)
    return load_weights(model, sd, str(resolved.weights), resolved.layout)


def load_model_file(path: Path) -> nn.Module:
    """The model a folder or a weights file holds, as it states it (:func:`file_config`)."""
    return build_loaded(file_config(path))


def _bare_file(path: Path) -> CheckpointError:
    """A weights file that does not say its architecture: refused, with the names that fit its shapes."""
    sd = read_state_dict(path)
    names = candidates(sd)
    fits = f" (architectures of this width, depth and patch: {', '.join(names)})" if names else ""
    layout = formats.layout_of(sd)
    kind = f"; its keys are {layout.name}'s" if layout.name != "timm" else ""
    owner = next((f for f in formats.FORMATS if f.layout is layout and f.prefix), None)
    arch = f"{owner.prefix}NAME" if owner is not None and owner.key != "timm" else "ARCH"
    return CheckpointError(
        f"{path}: a weights file without a {path.with_suffix('.json').name} sidecar does not say its architecture "
        f"({shape_summary(sd)}{kind}); pass --model {arch} --weights {path}{fits}"
    )


def shape_summary(sd: dict[str, torch.Tensor]) -> str:
    """What the weights of a bare file say (and do not say) about their architecture, in words."""
    proj = next((v for k, v in sd.items() if k.endswith(PATCH_KEYS)), None)
    blocks = {int(m.group(1)) for k in sd if (m := BLOCK_KEY.search(k))}
    if proj is None or not blocks:
        return "no ViT patch embedding or blocks found"
    return f"width {proj.shape[0]}, {max(blocks) + 1} blocks, patch {proj.shape[-1]}; the number of heads is not in it"


def candidates(sd: dict[str, torch.Tensor]) -> list[str]:
    """Named architectures whose width, depth and patch size fit ``sd`` (suggestions for --model)."""
    proj = sd.get("patch_embed.proj.weight")
    if proj is None:
        return []
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    from vitreg.models.presets import DINOV2_ALIASES

    widths = {"small": 384, "base": 768, "large": 1024, "giant": 1536}
    out = [
        name
        for name, p in PRESETS.items()
        if p["embed_dim"] == proj.shape[0] and p["depth"] == depth and p["patch_size"] == proj.shape[-1]
    ]
    out += [
        a for a, (t, _) in DINOV2_ALIASES.items() if proj.shape[-1] == 14 and widths[t.split("_")[1]] == proj.shape[0]
    ]
    return out


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model.safetensors`` + ``model.json`` so ``load_model(directory)`` re-creates the model alone."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = config_of(model)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic.write_safetensors(directory / WEIGHTS_NAME, sd, metadata={"format": "pt"})
    atomic.write_json(directory / CONFIG_NAME, cfg.to_json())
    return directory
