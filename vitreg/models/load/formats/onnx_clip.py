"""ONNX exports of a ``transformers`` vision tower, read as weights: the graph's initialisers, with the ``onnx``
package alone (no runtime, nothing executed). This module is the one ``.onnx`` format: it tells the family from the
graph's tensor names and reads CLIP itself; ViT, DeiT and DINOv2 are read by :mod:`.onnx_vit`, DINOv3 by
:mod:`.onnx_dinov3`, SigLIP by :mod:`.onnx_siglip`, all with the graph machinery of :mod:`.onnx_graph`.

What is read, and from where in the graph (exports by ``torch.onnx.export(..., dynamo=False)``, ``optimum``, and the
same graphs after ``onnxruntime.quantization.quantize_dynamic``; their node names keep transformers' module paths,
``/vision_model/encoder/layers.0/self_attn/q_proj/MatMul``):

- width, patch size and the position grid from the patch convolution and the position embedding; the depth from the
  layers the node names hold; the image size from the input's static shape where it has one (else from the grid);
- the number of heads from the attention's Reshape constants (``(B, N, heads, head_dim)``, where one of the two may
  be -1) and the attention scale from its Mul constants, which must multiply to ``1/sqrt(head_dim)``;
- the LayerNorm epsilon (a ``LayerNormalization`` attribute, or the constant added to the variance when the export
  spells the norm out) and the MLP activation (``x * sigmoid(1.702 x)``: QuickGELU; ``Erf`` or an exact ``Gelu``: GELU;
  ``Tanh`` with 0.044715: the tanh approximation);
- every Linear: a float ``MatMul``/``Gemm`` weight, or an int8/uint8 ``MatMulInteger`` weight dequantised exactly as
  onnxruntime's dynamic quantisation defines it, ``W = (q - zero_point) * scale`` per output column (or per tensor);
  the same for a ``ConvInteger`` patch embedding (per output channel) and a ``DequantizeLinear``'d embedding.

The families, told apart by their tensor names: CLIP (``embeddings.class_embedding`` + ``pre_layrnorm``); DINOv3
(``embeddings.register_tokens`` + ``layer_scale1.lambda1``, a patch convolution without ``projection``; its RoPE is
computed inside the graph, and its period and coordinate normalisation are read and checked from the graph's
constants); DINOv2 (``layer_scale1.lambda1``; its position table resampled inside the graph and read at its own
grid); DeiT (ViT's ``embeddings.cls_token`` + ``distillation_token``); ViT (``embeddings.cls_token``); SigLIP
(``head.probe`` or ``post_layernorm``, no [CLS]). The weights come out in that family's transformers keys, the config
as its ``config.json`` would state it, and both go through that family's folder reader and layout (:mod:`.hf_clip`,
:mod:`.hf_vit`, :mod:`.hf_deit`, :mod:`.hf_dinov2`, :mod:`.hf_dinov3`, :mod:`.hf_siglip`).

What the graph does not state is refused with a one-line :class:`CheckpointError` naming the file, never guessed.
Not read: ``Dinov2WithRegistersModel`` (torch's exporter cannot export its antialiased position resampling at opset
17, so there is no graph to test against), DINOv2's SwiGLU MLP (giant) and a DINOv3 graph whose input height and
width are dynamic (it has no position table, so only a static input states its image size).

As a format (:data:`FORMAT`): recognised by the ``.onnx`` suffix; the architecture read from the graph as above.
The preprocessing (mean and std) is not in a graph: it comes from a ``preprocessor_config.json`` beside the file
(optimum writes one) or else is the family's transformers image-processor default (``CLIPImageProcessor``: OpenAI's
statistics), and the model's ``source`` says which.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.models.load.formats import onnx_graph as og
from vitreg.models.load.formats.base import Format, Layout
from vitreg.models.load.formats.hf_clip import LAYOUT as CLIP_LAYOUT
from vitreg.models.load.formats.hf_clip import clip_config
from vitreg.models.load.formats.onnx_graph import Family, Graph, OnnxTower

if TYPE_CHECKING:
    import torch

    from vitreg.models.presets import ModelConfig

ACCEPTED = (
    "an ONNX export of a transformers CLIP, ViT, DeiT, DINOv2, DINOv3 or SigLIP vision tower (fp32 or onnxruntime "
    "dynamic int8) whose node names keep the module paths (torch.onnx.export(..., dynamo=False), optimum)"
)
QUICK_GELU = og.QUICK_GELU
OUT = "vision_model."  # the prefix of the keys produced (transformers' CLIPVisionModel state dict)
STACK = og.CLIP_STACK


def read_onnx(path: str | Path) -> OnnxTower:
    """The vision tower in ONNX file ``path``, of whichever family its tensor names say (CLIP, ViT, DeiT, DINOv2,
    DINOv3, SigLIP): its config and fp32 weights (CheckpointError when the graph is none of them, or does not state what
    vitreg needs). The weights loader (:mod:`vitreg.models.load.modelfile`) calls it for every ``.onnx`` file."""
    path = Path(path)
    model = og.load(path)
    g = Graph(model, path, ACCEPTED)
    family = next((f for f in FAMILIES if f.marks(g)), None)
    if family is None:
        raise g.fail(
            "not a vision tower of a transformers family vitreg reads from ONNX (no tensor names CLIP's "
            "embeddings.class_embedding + pre_layrnorm, ViT's / DeiT's / DINOv2's / DINOv3's embeddings.cls_token, or "
            f"SigLIP's head.probe / post_layernorm); accepted: {ACCEPTED}"
        )
    config, sd, quantized = family.read(g)
    opset, producer = og.provenance(model)
    return OnnxTower(config, sd, quantized=quantized, opset=opset, producer=producer, family=family.name)


# ------------------------------------------------------------------------------------------------------- CLIP
def _is_clip(g: Graph) -> bool:
    return g.find("embeddings.class_embedding") is not None and g.find("pre_layrnorm.weight") is not None


def _read_clip(g: Graph) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    g.root("embeddings.class_embedding")
    if not g.scope(g.n + "encoder/layers."):
        raise og.no_module_paths(g)
    sd: dict[str, torch.Tensor] = {}  # transformers' keys, whatever the export's own prefix
    quantized: list[str] = []
    emb = "embeddings."
    sd[OUT + emb + "class_embedding"] = og.tensor(g.floats(g.t + emb + "class_embedding"))
    patch = og.patch_weight(
        g, g.n + "embeddings/patch_embedding/", g.t + emb + "patch_embedding.weight", quantized, bias=False
    )
    sd[OUT + emb + "patch_embedding.weight"] = og.tensor(patch)
    sd[OUT + emb + "position_embedding.weight"] = og.tensor(
        og.embedding(g, g.t + emb + "position_embedding.weight", quantized)
    )
    for norm in ("pre_layrnorm", "post_layernorm"):
        for p in ("weight", "bias"):
            sd[f"{OUT}{norm}.{p}"] = og.tensor(g.floats(f"{g.t}{norm}.{p}"))
    depth = og.clip_layers(g, OUT, sd, quantized)
    return _config(g, sd, depth), sd, quantized


def _config(g: Graph, sd: dict[str, torch.Tensor], depth: int) -> dict[str, Any]:
    """The transformers CLIPVisionConfig that the graph states."""
    patch_w = sd[OUT + "embeddings.patch_embedding.weight"]  # (C, 3, p, p)
    width, patch = int(patch_w.shape[0]), int(patch_w.shape[-1])
    heads, head_dim = og.heads(g, STACK, width)
    og.check_scale(g, STACK, head_dim)
    fc1 = sd[OUT + "encoder.layers.0.mlp.fc1.weight"]  # (hidden, C)
    positions = int(sd[OUT + "embeddings.position_embedding.weight"].shape[0])  # [CLS] + grid^2
    grid = og.square_grid(g, positions, 1, "[CLS]")
    return {
        "model_type": "clip_vision_model",
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "intermediate_size": int(fc1.shape[0]),
        "patch_size": patch,
        "image_size": og.image_size(g, patch, grid),
        "layer_norm_eps": og.norm_eps(g, ("layer_norm", "layrnorm", "layernorm")),
        "hidden_act": og.activation(g, STACK, depth, ("quick_gelu", "gelu")),
    }


def preprocessor_beside(path: Path) -> tuple[dict[str, Any], str]:
    """The ``preprocessor_config.json`` next to an ONNX file (optimum's layout), and where the mean/std came from."""
    return og.preprocessor_beside(path, "CLIPImageProcessor")


def _clip_model_config(tower: OnnxTower, path: Path) -> ModelConfig:
    pre, where = preprocessor_beside(path)
    source = og.source(tower, "a transformers CLIP vision tower", where)
    return clip_config(tower.config, path, f"onnx:{path.name}", source, pre)


CLIP = Family(name="CLIP", marks=_is_clip, read=_read_clip, model_config=_clip_model_config, layout=CLIP_LAYOUT)


def _families() -> tuple[Family, ...]:
    from vitreg.models.load.formats import onnx_dinov3, onnx_siglip, onnx_vit

    return (CLIP, *onnx_dinov3.FAMILIES, *onnx_vit.FAMILIES, *onnx_siglip.FAMILIES)


#: The families read, in the order they are told apart (CLIP, then DINOv3 before DINOv2 before DeiT before ViT: each
#: later one's tensor names are a subset of the earlier one's)
FAMILIES: tuple[Family, ...] = _families()


# ------------------------------------------------------------------------------------------------ the format
_CONFIGS: dict[tuple, tuple[ModelConfig, Layout]] = {}  # the file's and its preprocessor's (path, mtime, size) -> ...


def _cached(path: Path) -> tuple[ModelConfig, Layout]:
    """The timm ViT an ONNX file states and its family's layout. The graph is parsed once per file version: checking
    a model and loading it read the same config."""
    import copy

    pre = path.parent / "preprocessor_config.json"
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in (path, pre) if p.is_file())
    if key not in _CONFIGS:
        _CONFIGS.clear()  # one file at a time: configs are small, but a long session sees many files
        _CONFIGS[key] = _read_config(path)
    cfg, layout = _CONFIGS[key]
    return copy.deepcopy(cfg), layout


def onnx_config(path: Path) -> ModelConfig:
    """An ONNX export of a transformers vision tower -> its timm ViT (every size read from the graph)."""
    return _cached(path)[0]


def _read_config(path: Path) -> tuple[ModelConfig, Layout]:
    tower = read_onnx(path)
    family = next(f for f in FAMILIES if f.name == tower.family)
    return family.model_config(tower, path), family.layout


def _read_file(path: Path) -> tuple[ModelConfig, Layout]:
    return _cached(path)


FORMAT = Format(
    key="onnx",
    preprocessing="a `preprocessor_config.json` beside the file, else the family's image processor's defaults",
    resampling="as the transformers class the graph was exported from (DINOv3: RoPE, no table)",
    owner="onnx",
    what="an ONNX export of a `transformers` vision tower: CLIP, ViT, DeiT, DINOv2 (`Dinov2Model`), DINOv3 "
    "(`DINOv3ViTModel`, its in-graph RoPE read from the graph's constants; a static input size) or SigLIP "
    "(`torch.onnx.export(..., dynamo=False)` or optimum; fp32 or onnxruntime dynamic int8, dequantised exactly; read "
    "with the `onnx` package, nothing executed; the family told by the graph's tensor names, the architecture read "
    "from the graph; mean/std from a `preprocessor_config.json` beside it, else the family's image-processor "
    "default)",
    command="vitreg diagnose --model clip_vision.onnx --images photos --out runs/d",
    accepted="an ONNX export of a transformers CLIP / ViT / DeiT / DINOv2 / DINOv3 / SigLIP vision tower (.onnx)",
    recognised_by="the .onnx suffix; the family by its tensors: embeddings.class_embedding + pre_layrnorm (CLIP), "
    "embeddings.register_tokens + layer_scale1.lambda1 (DINOv3), layer_scale1.lambda1 (DINOv2), "
    "embeddings.cls_token (+ distillation_token: DeiT; ViT), head.probe / post_layernorm without [CLS] (SigLIP)",
    states_architecture="the graph: width, patch, grid, depth, heads (Reshape), scale, eps, activation, RoPE period",
    order=60,
    claims_file=lambda path: path.suffix == ".onnx",
    suffixes=(".onnx",),
    read_file=_read_file,
    read_weights=lambda path: read_onnx(path).state_dict,  # the initialisers, int8 dequantised, in transformers' keys
    layout=CLIP_LAYOUT,
)
