"""ONNX exports of ``transformers`` ViT, DeiT and DINOv2 vision towers (``ViTModel``, ``DeiTModel``, ``Dinov2Model``
and the backbone of their ``*ForImageClassification``), read by the one ``.onnx`` format (:mod:`.onnx_clip`) with
the graph machinery of :mod:`.onnx_graph` (not a format itself).

The three share BERT's encoder layout and name it in one of two ways, both read: transformers 4's module paths
(``/encoder/layer.0/attention/attention/query/MatMul``, ``attention/output/dense``, ``intermediate/dense``,
``output/dense``: what optimum's exports of the published models hold) and transformers 5's (``/layers.0/attention/
q_proj`` for ViT and DeiT, ``/encoder/layer.0/attention/q_proj`` for DINOv2, ``attention/o_proj``, ``mlp/fc1``,
``mlp/fc2``). Norms: ``layernorm_before`` / ``layernorm_after`` (ViT, DeiT), ``norm1`` / ``norm2`` and LayerScale
``layer_scale1.lambda1`` / ``layer_scale2.lambda1`` (DINOv2); the final ``layernorm``.

The weights come out in the keys of the family's ``model.safetensors`` (transformers 4's names) and go through its
folder layout (:mod:`.hf_vit`, :mod:`.hf_deit`, :mod:`.hf_dinov2`); the config is what its ``config.json`` would say,
read by its folder reader, so the preprocessing is a ``preprocessor_config.json`` beside the file or that family's
image-processor default (ViT: 0.5; DeiT and DINOv2: ImageNet's).

- ViT and DeiT: [CLS] (and DeiT's distillation token, a prefix token of its own) have positions in
  ``embeddings.position_embeddings`` (1, prefix + grid^2, C), which the graph adds as it is: its grid is the image
  size, and a static input shape must agree.
- DINOv2: the graph resamples the position table to its input itself (bicubic), and torch's exporter folds the slices
  of the table into two constants: [CLS]'s row (1, 1, C), concatenated before the resampled grid, and the grid
  (1, grid^2, C), which a Reshape to (1, grid, grid, C) feeds to the ``Resize``. They are read where they are (or as
  ``embeddings.position_embeddings`` where the export kept it) at their own grid, as a ``config.json`` states it
  (``image_size`` is the table's: 518 for the published models). Not read: registers (``Dinov2WithRegistersModel``:
  torch cannot export its antialiased resampling at opset 17, so no graph was tested) and the SwiGLU MLP (giant).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitreg.errors import CheckpointError
from vitreg.models.load.formats import hf_deit, hf_dinov2, hf_vit
from vitreg.models.load.formats import onnx_graph as og
from vitreg.models.load.formats.onnx_graph import Family, Graph, OnnxTower, Stack

if TYPE_CHECKING:
    import torch

    from vitreg.models.presets import ModelConfig

_FILE_LINEARS = ("attention/attention/query", "attention/attention/key", "attention/attention/value",
                 "attention/output/dense")  # fmt: skip
_T5_ATTENTION = ("attention/q_proj", "attention/k_proj", "attention/v_proj", "attention/o_proj")


@dataclasses.dataclass(frozen=True)
class Naming:
    """One way an export names a BERT-style encoder: where its layers are (``stack``) and, under one layer, the module
    path in the graph of each Linear and norm, keyed by its name in the family's safetensors file."""

    stack: Stack
    linears: dict[str, str]
    norms: dict[str, str]


def _naming(layers: str, t5: bool, mlp: tuple[str, str], norms: tuple[str, str], activation: str) -> Naming:
    attention = _T5_ATTENTION if t5 else _FILE_LINEARS
    stack = Stack(layers=layers, query=attention[0], attention=attention[0].rsplit("/", 1)[0], activation=activation)
    file_mlp = ("intermediate/dense", "output/dense") if norms[0] == "layernorm_before" else ("mlp/fc1", "mlp/fc2")
    keys = (*_FILE_LINEARS, *file_mlp)
    linears = {k.replace("/", "."): sub for k, sub in zip(keys, (*attention, *mlp), strict=True)}
    return Naming(stack, linears, {n: n for n in norms})


_VIT = ("layernorm_before", "layernorm_after")
_DINOV2 = ("norm1", "norm2")
#: ViT and DeiT as transformers 5 and 4 name them in memory (what the exporter sees), then DINOv2's two
VIT_NAMINGS = (
    _naming("layers", True, ("mlp/fc1", "mlp/fc2"), _VIT, "mlp/activation_fn"),
    _naming("encoder/layer", False, ("intermediate/dense", "output/dense"), _VIT, "intermediate/intermediate_act_fn"),
)
DINOV2_NAMINGS = (
    _naming("encoder/layer", True, ("mlp/fc1", "mlp/fc2"), _DINOV2, "mlp/activation_fn"),
    _naming("encoder/layer", False, ("mlp/fc1", "mlp/fc2"), _DINOV2, "mlp/activation"),
)


def _layers(g: Graph, namings: tuple[Naming, ...]) -> Naming:
    found = next((n for n in namings if n.stack.present(g)), None)
    if found is not None:
        return found
    if g.scope(g.n + "embeddings/") or any(g.scope(f"{g.n}{n.stack.layers}.") for n in namings):
        wanted = " or ".join(f"{g.n}{n.stack.layers}.0/{n.stack.query}/MatMul" for n in namings)
        raise g.fail(f"no {wanted} in the graph (an encoder vitreg does not read); accepted: {g.accepted}")
    raise og.no_module_paths(g)


def _read(g: Graph, namings: tuple[Naming, ...], dinov2: bool) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The tower's config (as its config.json says it) and weights (its safetensors keys, no prefix)."""
    g.root("embeddings.cls_token")
    if dinov2 and og.has(g, r"embeddings\.register_tokens$"):
        raise g.fail(
            "a Dinov2WithRegistersModel graph: not read from ONNX (torch cannot export its antialiased position "
            f"resampling at opset 17, so vitreg has no graph to test it against); accepted: {g.accepted}"
        )
    if og.has(g, r"mlp\.(weights_in|gate_proj)"):
        raise g.fail(f"a SwiGLU MLP (DINOv2 giant): not read from ONNX; accepted: {g.accepted}")
    naming = _layers(g, namings)
    stack = naming.stack
    sd: dict[str, torch.Tensor] = {}
    quantized: list[str] = []
    emb = "embeddings."
    sd[emb + "cls_token"] = og.tensor(g.floats(g.t + emb + "cls_token"))  # (1, 1, C)
    prefix = 1
    if g.find(emb + "distillation_token") is not None:  # DeiT: a second prefix token, with its own position
        sd[emb + "distillation_token"] = og.tensor(g.floats(g.t + emb + "distillation_token"))
        prefix = 2
    proj = emb + "patch_embeddings.projection."
    patch = og.patch_weight(g, g.n + proj.replace(".", "/"), g.t + proj + "weight", quantized, bias=True)
    sd[proj + "weight"] = og.tensor(patch)  # (C, 3, p, p)
    sd[proj + "bias"] = og.tensor(g.floats(g.t + proj + "bias"))
    pos = _dinov2_positions(g) if dinov2 else g.floats(g.t + emb + "position_embeddings")
    sd[emb + "position_embeddings"] = og.tensor(pos.reshape(1, -1, patch.shape[0]))  # (1, prefix + grid^2, C)
    for p in ("weight", "bias"):
        sd[f"layernorm.{p}"] = og.tensor(g.floats(f"{g.t}layernorm.{p}"))
    depth = og.depth(g, stack)
    for i in range(depth):
        base = f"encoder.layer.{i}."
        for key, sub in naming.norms.items():
            for p in ("weight", "bias"):
                sd[f"{base}{key}.{p}"] = og.tensor(g.floats(stack.tensor(g, i, f"{sub}.{p}")))
        if dinov2:
            for ls in ("layer_scale1.lambda1", "layer_scale2.lambda1"):
                sd[base + ls] = og.tensor(g.floats(stack.tensor(g, i, ls)))  # (C,)
        og.linears(g, stack, i, naming.linears, base, sd, quantized)
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    heads, head_dim = og.heads(g, stack, width)
    og.check_scale(g, stack, head_dim)
    fc1 = next(v for k, v in sd.items() if k.endswith(("intermediate.dense.weight", "mlp.fc1.weight")))  # (hidden, C)
    hidden = int(fc1.shape[0])
    tokens = "[CLS]" if prefix == 1 else "[CLS], the distillation token"
    grid = og.square_grid(g, int(pos.size // width), prefix, tokens)
    config: dict[str, Any] = {
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "patch_size": patch_size,
        "image_size": og.image_size(g, patch_size, grid, resampled=dinov2),
        "num_channels": 3,
        "qkv_bias": True,  # every q, k, v bias was read above
        "layer_norm_eps": og.norm_eps(g, ("layernorm", "norm1", "norm2")),
        "hidden_act": og.activation(g, stack, depth, ("gelu",)),
    }
    if dinov2:
        config |= {
            "model_type": "dinov2",
            "mlp_ratio": og.mlp_ratio(g, hidden, width),
            "use_swiglu_ffn": False,
            # an initial value: only whether there is LayerScale matters, its gammas are the weights read above
            "layerscale_value": 1.0,
            "num_register_tokens": 0,
        }
    else:
        config |= {"model_type": "deit" if prefix == 2 else "vit", "intermediate_size": hidden}
    return config, sd, quantized


def _dinov2_positions(g: Graph) -> np.ndarray:
    """DINOv2's position table (1, 1 + grid^2, C) in the graph: the initialiser itself, or [CLS]'s row and the grid
    as torch's exporter folds them around the in-graph resampling (see the module's docstring)."""
    name = g.t + "embeddings.position_embeddings"
    if (v := g.value(name)) is not None and v.dtype.kind == "f":
        return v.astype(np.float32)
    resizes = g.scope(g.n + "embeddings/", ("Resize",))
    if len(resizes) != 1:
        raise g.fail(f"no {name!r} and {len(resizes)} Resize nodes under {g.n}embeddings/: no position table read")
    resize = resizes[0]
    grid = _up_to_constant(g, resize.input[0])  # (1, grid^2, C) -> Reshape (1, g, g, C) -> Transpose -> Resize
    joins = [n for n in g.scope(g.n + "embeddings/", ("Concat",)) if len(n.input) == 2 and _from(g, n.input[1], resize)]
    cls = g.value(joins[0].input[0]) if len(joins) == 1 else None
    if grid is None or cls is None or cls.dtype.kind != "f" or cls.size != grid.shape[-1]:
        raise g.fail(f"no {name!r}, and the position table around {resize.name} is not [CLS]'s row + a constant grid")
    return np.concatenate([cls.reshape(1, 1, -1), grid.reshape(1, -1, grid.shape[-1])], 1).astype(np.float32)


_PASS = ("Cast", "Transpose", "Reshape", "Identity")  # the nodes between the table and the Resize, and after it


def _up_to_constant(g: Graph, name: str) -> np.ndarray | None:
    """The float constant that ``name`` is, through Cast / Transpose / Reshape nodes (None when it is computed)."""
    for _ in range(16):
        v = g.value(name)
        if v is not None:
            return v if v.dtype.kind == "f" and v.ndim == 3 and v.shape[0] == 1 else None
        node = g.producer.get(name)
        if node is None or node.op_type not in _PASS:
            return None
        name = node.input[0]
    return None


def _from(g: Graph, name: str, target: Any) -> bool:
    """Whether tensor ``name`` is ``target``'s output, through Cast / Transpose / Reshape nodes."""
    for _ in range(16):
        node = g.producer.get(name)
        if node is target:
            return True
        if node is None or node.op_type not in _PASS:
            return False
        name = node.input[0]
    return False


def _model_config(
    read_config: Callable[[dict[str, Any], Path], ModelConfig], what: str
) -> Callable[[OnnxTower, Path], ModelConfig]:
    """The family's folder reader on the config the graph states, as if it were a ``config.json`` beside the file (so
    it reads the ``preprocessor_config.json`` there); its spec and source say the file."""

    def model_config(tower: OnnxTower, path: Path) -> ModelConfig:
        processor = {"vit": "ViTImageProcessor", "deit": "DeiTImageProcessor", "dinov2": "BitImageProcessor"}
        _, where = og.preprocessor_beside(path, processor[str(tower.config["model_type"])])
        try:
            cfg = read_config(tower.config, path.parent)
        except CheckpointError as err:  # the reader names a config.json that is the graph's here
            raise CheckpointError(str(err).replace(str(path.parent / "config.json"), str(path), 1)) from None
        return dataclasses.replace(cfg, spec=f"onnx:{path.name}", source=og.source(tower, what, where))

    return model_config


def _marks(dinov2: bool, deit: bool) -> Callable[[Graph], bool]:
    def marks(g: Graph) -> bool:
        if g.find("embeddings.cls_token") is None:
            return False
        if dinov2 or og.has(g, r"layer_scale1\.lambda1$"):
            return dinov2 and og.has(g, r"layer_scale1\.lambda1$")
        return deit == (g.find("embeddings.distillation_token") is not None)

    return marks


def _reader(namings: tuple[Naming, ...], dinov2: bool) -> Callable[[Graph], tuple[dict[str, Any], Any, list[str]]]:
    return lambda g: _read(g, namings, dinov2)


FAMILIES = (
    Family("DINOv2", _marks(dinov2=True, deit=False), _reader(DINOV2_NAMINGS, True),
           _model_config(hf_dinov2.read_config, "a transformers Dinov2Model"), hf_dinov2.LAYOUT),
    Family("DeiT", _marks(dinov2=False, deit=True), _reader(VIT_NAMINGS, False),
           _model_config(hf_deit.read_config, "a transformers DeiTModel (its distillation token kept as a prefix "
                         "token)"), hf_deit.LAYOUT),
    Family("ViT", _marks(dinov2=False, deit=False), _reader(VIT_NAMINGS, False),
           _model_config(hf_vit.read_config, "a transformers ViTModel"), hf_vit.LAYOUT),
)  # fmt: skip
