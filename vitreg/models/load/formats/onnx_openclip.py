"""ONNX exports of an OpenCLIP image tower (``open_clip.transformer.VisionTransformer``: a CLIP model's ``visual``)
that keep OpenCLIP's module names, read as weights with the ``onnx`` package alone (nothing executed), with the graph
machinery of :mod:`.onnx_graph`.

``torch.onnx.export(model.visual, ..., dynamo=False)`` keeps OpenCLIP's module paths in the node names
(``/transformer/resblocks.0/mlp/c_fc/MatMul``) and OpenCLIP's parameter names on the initialisers it uses as they
are (``conv1.weight``, ``ln_pre.weight``, ``transformer.resblocks.0.attn.in_proj_bias``, ``...attn.out_proj.weight``
of a ``Gemm``, ``proj``). The others it folds into constants with generated names (``onnx::MatMul_405``), read here
through the graph's structure:

- ``class_embedding`` (C,): the (1, 1, C) constant that an ``Expand`` repeats over the batch, first in the ``Concat``
  of [CLS] and the patches; ``positional_embedding`` (1 + grid^2, C): the constant added to that ``Concat``, the sum
  entering ``ln_pre``;
- ``nn.MultiheadAttention``'s ``in_proj_weight`` (3C, C: q, k, v): the transpose of the one (C, 3C) constant that a
  ``MatMul`` of the block's ``attn`` multiplies by; ``mlp.c_fc`` / ``mlp.c_proj``: the transposed constants of the
  ``MatMul`` under ``/mlp/c_fc/`` and ``/mlp/c_proj/``;
- after ``onnxruntime.quantization.quantize_dynamic`` every Linear (``out_proj`` and ``proj`` too) is a
  ``MatMulInteger`` on an int8 weight and ``conv1`` a ``ConvInteger``, dequantised exactly as onnxruntime defines it.

The architecture, from the graph: width and patch from ``conv1``; the grid from the position table ([CLS] + a square
grid); the depth from the ``resblocks.N`` of the node names; the heads from the Reshape that splits q into
(B, heads, N, head_dim) (axis 1 is a constant whatever the batch); the attention scale, which torch writes as
``sqrt(1 / sqrt(q.shape[-1]))`` on q and on k (or as constants), must multiply to 1/sqrt(head_dim) in every block; the
LayerNorm epsilon from the norms; QuickGELU (``x * sigmoid(1.702 x)``) or exact GELU (``Erf``) from ``mlp/gelu``; the
MLP width from ``c_fc``; the image size from the grid (a static input must agree); ``proj`` (C, D) where the graph
projects the [CLS] token after ``ln_post``: then it is the timm model's head, and vitreg's output is the graph's own.

Refused, in one line naming the file: a graph whose node names lost the module paths (torch's dynamo exporter), and
the tower variants vitreg does not read from a graph, as :mod:`.openclip` refuses them in a folder: LayerScale
(``ls_1`` / ``ls_2``), other blocks (``ln_attn``, ``mlp.ln``, scaled cosine attention), no ``ln_pre``, attentional or
average pooling, ``ln_post`` after the pooling.

As a format (:data:`FORMAT`): a ``.onnx`` file whose tensor names are OpenCLIP's (``transformer.resblocks.0.`` with
``attn.in_proj_bias``, as ``nn.MultiheadAttention`` names it; transformers' graphs say ``encoder.layers``), tried
before the transformers families' one ``.onnx`` format (:mod:`.onnx_clip`). The preprocessing is not in a graph: an
``open_clip_config.json`` beside the file (its ``preprocess_cfg``, else its ``vision_cfg`` mean/std, as an OpenCLIP
folder holds them), else a ``preprocessor_config.json`` beside it (``image_mean`` / ``image_std``), else OpenCLIP's
default (OpenAI's statistics); the model's ``source`` says which. The weights come out in OpenCLIP's state-dict keys
(``visual.*``) and go through :mod:`.openclip`'s layout (timm's converter; OpenCLIP's ``resize_pos_embed`` at another
``--img-size``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitreg.models.load.formats import onnx_graph as og
from vitreg.models.load.formats.base import Format, Layout, mean_std, read_json, with_processor
from vitreg.models.load.formats.onnx_graph import Graph, OnnxTower
from vitreg.models.load.formats.openclip import LAYOUT, OPENAI, tower_config
from vitreg.models.load.formats.resampling import OPENCLIP

if TYPE_CHECKING:
    import torch

    from vitreg.models.presets import ModelConfig

ACCEPTED = (
    "an OpenCLIP VisionTransformer (model.visual) exported by torch.onnx.export(..., dynamo=False), fp32 or "
    "onnxruntime dynamic int8"
)
OUT = "visual."  # the prefix of the keys produced: an OpenCLIP CLIP's state dict, which its layout converts
STACK = og.Stack(layers="transformer/resblocks", query="attn", attention="attn", activation="mlp/gelu")
#: OpenCLIP's tensor names (the first block's fused attention bias or first norm; a transformers graph has none), and
#: the tower's prefix before them
TENSOR_ROOT = re.compile(r"^((?:.*\.)?)transformer\.resblocks\.0\.(?:attn\.in_proj_bias|ln_1\.weight)$")
NODE_ROOT = re.compile(r"^(.*/)transformer/resblocks\.0/")
BLOCK_PARTS = {"ln_1", "attn", "ln_2", "mlp"}  # the submodules of OpenCLIP's ResidualAttentionBlock that have nodes
MLP_PARTS = {"c_fc", "gelu", "c_proj"}
LINEAR_OPS = ("MatMul", "MatMulInteger", "Gemm")
SIDECARS = ("open_clip_config.json", "preprocessor_config.json")


def read_onnx(path: str | Path) -> OnnxTower:
    """The OpenCLIP image tower in ONNX file ``path``: its ``vision_cfg`` as the graph states it and its fp32
    weights in OpenCLIP's keys (CheckpointError when the graph does not state what vitreg needs)."""
    path = Path(path)
    model = og.load(path)
    g = Graph(model, path, ACCEPTED)
    if not og.has(g, TENSOR_ROOT.pattern):
        raise g.fail(f"no OpenCLIP tensor names (transformer.resblocks.0.attn.in_proj_bias); accepted: {ACCEPTED}")
    config, sd, quantized = _read(g)
    opset, producer = og.provenance(model)
    return OnnxTower(config, sd, quantized=quantized, opset=opset, producer=producer, family="OpenCLIP")


def _read(g: Graph) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    _root(g)
    if not g.scope(g.n + "conv1/", ("Conv", "ConvInteger")):
        raise g.fail("no conv1 patch embedding: not an OpenCLIP image tower (a text tower?)")
    depth = og.depth(g, STACK)
    _refuse_variants(g)
    sd: dict[str, torch.Tensor] = {}
    quantized: list[str] = []
    patch = og.patch_weight(g, g.n + "conv1/", OUT + "conv1.weight", quantized, bias=False)  # (C, 3, p, p)
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    sd[OUT + "conv1.weight"] = og.tensor(patch)
    cls, pos = _embeddings(g, width)
    sd[OUT + "class_embedding"] = og.tensor(cls)  # (C,)
    sd[OUT + "positional_embedding"] = og.tensor(pos)  # (1 + grid^2, C), [CLS] first
    for norm in ("ln_pre", "ln_post"):
        for p in ("weight", "bias"):
            sd[f"{OUT}{norm}.{p}"] = og.tensor(g.floats(f"{g.t}{norm}.{p}"))
    heads = {_block(g, i, width, sd, quantized) for i in range(depth)}
    if len(heads) != 1:
        raise g.fail(f"the blocks split the attention into different numbers of heads ({sorted(heads)})")
    proj = _projection(g, depth, width, quantized)
    if proj is not None:
        sd[OUT + "proj"] = og.tensor(proj)  # (C, D): pooled [CLS] @ proj
    hidden = int(sd[OUT + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    grid = og.square_grid(g, int(pos.shape[0]), 1, "[CLS]")
    num_heads = heads.pop()
    config = {  # what an open_clip_config.json's vision_cfg would say, and what OpenCLIP's config leaves implicit
        "width": width,
        "layers": depth,
        "heads": num_heads,
        "head_width": width // num_heads,
        "patch_size": patch_size,
        "image_size": og.image_size(g, patch_size, grid),
        "mlp_ratio": og.mlp_ratio(g, hidden, width),
        "quick_gelu": og.activation(g, STACK, depth, ("quick_gelu", "gelu")) == "quick_gelu",
        "layer_norm_eps": og.norm_eps(g, ("/ln_",)),
        "output_dim": None if proj is None else int(proj.shape[1]),
    }
    return config, sd, quantized


def _root(g: Graph) -> None:
    """The image tower's prefix in tensor names (``visual.`` in a whole CLIP's export, empty in ``model.visual``'s)
    and in node names, found apart: a wrapper's ``self.model.encode_image(x)`` names its tensors ``model.visual.*``
    but its nodes ``/visual/...`` (a method is no module scope). A text tower's blocks have the same names: the image
    tower's are those beside ``conv1``."""
    names = list(g.inits) + [o for n in g.nodes if n.op_type == "Identity" for o in n.output]
    tensors = {m.group(1) for x in names if (m := TENSOR_ROOT.match(x))}
    nodes = {m.group(1) for n in g.nodes if (m := NODE_ROOT.match(n.name))}
    if not nodes:
        raise g.fail(
            "the graph's node names do not keep OpenCLIP's module paths (an export by torch.onnx's dynamo exporter?): "
            "re-export model.visual with torch.onnx.export(..., dynamo=False)"
        )
    beside = ("ln_pre.weight", "conv1.weight", "conv1.weight_quantized")
    t = _one({t for t in tensors if any(f"{t}{c}" in names for c in beside)}, tensors)
    n = _one({p for p in nodes if g.scope(p + "conv1/")}, nodes)
    if t is None or n is None:
        raise g.fail(f"cannot tell the image tower among the towers of the graph ({sorted(tensors)}, {sorted(nodes)})")
    g.t, g.n = t, n


def _one(image: set[str], every: set[str]) -> str | None:
    """The image tower's prefix: the one beside conv1, else the only one there is (None: no telling)."""
    return next(iter(image)) if len(image) == 1 else next(iter(every)) if len(every) == 1 else None


def _refuse_variants(g: Graph) -> None:
    """OpenCLIP tower variants whose graphs hold more than vitreg reads: refused by the modules their nodes are in."""
    if not g.scope(g.n + "ln_pre/"):
        raise g.fail("an OpenCLIP tower without ln_pre (no_ln_pre) is not read from ONNX")
    if g.scope(g.n + "attn_pool"):
        raise g.fail("an OpenCLIP tower with attentional pooling (attn_pool) is not read from ONNX")
    parts: set[str] = set()
    mlp: set[str] = set()
    block = re.compile("^" + re.escape(f"{g.n}transformer/resblocks.") + r"\d+/([^/]+)/(?:([^/]+)/)?")
    for n in g.nodes:
        if m := block.match(n.name):
            parts.add(m.group(1))
            if m.group(1) == "mlp" and m.group(2):
                mlp.add(m.group(2))
    other = sorted(parts - BLOCK_PARTS) + [f"mlp.{p}" for p in sorted(mlp - MLP_PARTS)]
    if other:
        what = " (LayerScale)" if {"ls_1", "ls_2"} & parts else ""
        raise g.fail(f"blocks with modules vitreg does not read from ONNX: {', '.join(other)}{what}")


def _scope_input(g: Graph, nodes: list[Any]) -> str:
    """The activation entering a module (its nodes): the one non-constant input made outside it."""
    names = {n.name for n in nodes}
    for n in nodes:
        for i in n.input:
            src = g.producer.get(i)
            if i and (src is None or src.name not in names) and g.value(i) is None:
                return i
    raise g.fail(f"cannot find the input of {nodes[0].name.rsplit('/', 1)[0] if nodes else 'a module'}")


def _constant(g: Graph, name: str) -> np.ndarray | None:
    """The constant behind ``name`` through the nodes that only move it (a Cast to the input's dtype, an Expand over
    the batch, a Reshape / Unsqueeze of the parameter): how the exporter leaves OpenCLIP's embeddings."""
    for _ in range(8):
        v = g.value(name)
        if v is not None:
            return v if v.dtype.kind == "f" else None
        node = g.producer.get(name)
        if node is None or node.op_type not in ("Cast", "Identity", "Expand", "Reshape", "Unsqueeze"):
            return None
        name = node.input[0]
    return None


def _embeddings(g: Graph, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``class_embedding`` (C,) and ``positional_embedding`` (1 + grid^2, C): ``ln_pre(cat([CLS], patches) + pos)``."""
    summed = g.producer.get(_scope_input(g, g.scope(g.n + "ln_pre/")))
    found = None
    if summed is not None and summed.op_type == "Add":
        tables = [_constant(g, i) for i in summed.input]
        if sum(t is not None for t in tables) == 1:
            k = 0 if tables[0] is not None else 1
            found = tables[k], g.producer.get(summed.input[1 - k])
    pos, cat = found if found is not None else (None, None)
    if pos is None or cat is None or cat.op_type != "Concat":
        raise g.fail("ln_pre's input is not [CLS] and the patches plus a constant position embedding")
    cls = _constant(g, cat.input[0]) if len(cat.input) == 2 else None
    if cls is None or cls.size != width or g.attr(cat, "axis") not in (1, -2):
        raise g.fail("the token sequence is not a constant [CLS] followed by the patches")
    pos = pos.astype(np.float32)
    if pos.ndim not in (2, 3) or pos.shape[-1] != width:
        raise g.fail(f"the position embedding {pos.shape} is not (tokens, {width})")
    return cls.astype(np.float32).reshape(width), pos.reshape(-1, width)


def _block(g: Graph, i: int, width: int, sd: dict[str, torch.Tensor], quantized: list[str]) -> int:
    """Block ``i``'s norms, attention and MLP into ``sd`` (OpenCLIP's keys); returns its number of heads."""
    t, out = f"{g.t}transformer.resblocks.{i}.", f"{OUT}transformer.resblocks.{i}."
    for norm in ("ln_1", "ln_2"):
        for p in ("weight", "bias"):
            sd[f"{out}{norm}.{p}"] = og.tensor(g.floats(f"{t}{norm}.{p}"))
    attn = STACK.node(g, i, "attn")
    weights: dict[tuple[int, ...], list[tuple[np.ndarray, bool]]] = {}
    for n in g.scope(attn, LINEAR_OPS):
        if g.value(n.input[1]) is not None:  # a weight; q @ k^T and attn @ v multiply activations
            w, was_int8 = og.node_weight(g, n, n.name.strip("/"))
            weights.setdefault(tuple(w.shape), []).append((w, was_int8))
    fused, proj = weights.get((3 * width, width), []), weights.get((width, width), [])
    if len(fused) != 1 or len(proj) != 1 or len(weights) != 2:
        shapes = sorted(s for s, ws in weights.items() for _ in ws)
        raise g.fail(
            f"{attn.strip('/')}: not nn.MultiheadAttention's fused in_proj (3C, C) and out_proj (C, C) (weights "
            f"{shapes})"
        )
    for key, (w, was_int8) in (("attn.in_proj_weight", fused[0]), ("attn.out_proj.weight", proj[0])):
        sd[out + key] = og.tensor(w)
        if was_int8:
            quantized.append(out + key)
    sd[out + "attn.in_proj_bias"] = og.tensor(g.floats(t + "attn.in_proj_bias"))  # (3C,): q, k, v
    sd[out + "attn.out_proj.bias"] = og.tensor(g.floats(t + "attn.out_proj.bias"))
    for fc in ("c_fc", "c_proj"):
        w, was_int8 = og.linear_weight(g, STACK.node(g, i, f"mlp/{fc}"))
        sd[f"{out}mlp.{fc}.weight"] = og.tensor(w)
        sd[f"{out}mlp.{fc}.bias"] = og.tensor(g.floats(f"{t}mlp.{fc}.bias"))
        if was_int8:
            quantized.append(f"{out}mlp.{fc}.weight")
    return _heads_and_scale(g, attn, width)


# ------------------------------------------------------------------------------------------- heads and scale
def _scalar(g: Graph, name: str, head_dim: float, depth: int = 0) -> float | None:
    """The value of a scalar the graph computes from constants and q's last axis (``head_dim``), None for a tensor:
    torch writes SDPA's scale as ``sqrt(1 / sqrt(Cast(Shape(q)[-1])))``, or folds it into a constant."""
    v = g.value(name)
    if v is not None:
        return float(np.asarray(v).reshape(-1)[0]) if v.size == 1 else None
    node = g.producer.get(name)
    if node is None or depth > 12:
        return None
    op = node.op_type
    if op in ("Slice", "Gather") and (src := g.producer.get(node.input[0])) is not None and src.op_type == "Shape":
        start = g.value(node.input[1])  # Slice's starts, Gather's index: -1, q's last axis
        return head_dim if start is not None and int(np.asarray(start).reshape(-1)[0]) == -1 else None
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Sqrt", "Reciprocal"):  # one operand (and its axes)
        x = _scalar(g, node.input[0], head_dim, depth + 1)
        if x is None or (op == "Sqrt" and x < 0) or (op == "Reciprocal" and not x):
            return None
        return math.sqrt(x) if op == "Sqrt" else 1.0 / x if op == "Reciprocal" else x
    if op in ("Mul", "Div") and len(node.input) == 2:
        a, b = (_scalar(g, i, head_dim, depth + 1) for i in node.input)
        if a is None or b is None or (op == "Div" and not b):
            return None
        return a * b if op == "Mul" else a / b
    return None


def _walk(g: Graph, name: str, head_dim: float) -> tuple[float, list[list[int | None]]]:
    """From q (or k) as the attention scores' MatMul takes it, back to its head split: the scalar factors it was
    multiplied by and the shapes of the Reshapes it went through, nearest first."""
    factor, shapes = 1.0, []
    for _ in range(16):
        node = g.producer.get(name)
        if node is None:
            break
        if node.op_type in ("Mul", "Div") and len(node.input) == 2:
            s = [_scalar(g, i, head_dim) for i in node.input]
            if (s[0] is None) == (s[1] is None):
                break
            k = 0 if s[0] is None else 1  # the tensor's side
            value = s[1 - k]
            assert value is not None
            if node.op_type == "Div" and (k == 1 or not value):  # a scalar divided by the tensor is no scale
                break
            factor *= value if node.op_type == "Mul" else 1.0 / value
            name = node.input[k]
        elif node.op_type in ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Cast"):
            if node.op_type == "Reshape":
                shapes.append(g.ints(node.input[1]))
            name = node.input[0]
        else:
            break
    return factor, shapes


def _heads_and_scale(g: Graph, attn: str, width: int) -> int:
    """The number of heads of one block's attention (from q's head split) and its scale, checked."""
    scores = [
        n for n in g.scope(attn, ("MatMul",)) if any(c.op_type == "Softmax" for c in g.consumers.get(n.output[0], []))
    ]
    if len(scores) != 1:
        raise g.fail(f"{attn.strip('/')}: expected one q @ k^T MatMul before a Softmax, found {len(scores)}")
    q, k = scores[0].input[0], scores[0].input[1]
    heads = None
    for shape in _walk(g, q, 1.0)[1]:
        if len(shape) == 4 and shape[1] is not None and shape[1] > 0:  # (B, heads, N, head_dim)
            heads = shape[1]
        elif len(shape) == 3 and shape[2] is not None and shape[2] > 0 and width % shape[2] == 0:  # (N, B*heads, hd)
            heads = width // shape[2]
        if heads is not None:
            if shape[-1] not in (None, -1) and shape[-1] * heads != width:
                raise g.fail(f"{attn.strip('/')}: q's head split {shape} does not multiply back to width {width}")
            break
    if heads is None or width % heads:
        raise g.fail(f"{attn.strip('/')}: the number of heads is not fixed in q's head split (a Reshape constant)")
    head_dim = width // heads
    scale = _walk(g, q, head_dim)[0] * _walk(g, k, head_dim)[0]
    if not math.isclose(scale, head_dim**-0.5, rel_tol=1e-4):
        raise g.fail(
            f"{attn.strip('/')}: the attention scale is {scale:.4g}, not 1/sqrt(head_dim) = {head_dim**-0.5:.4g}"
        )
    return heads


# ----------------------------------------------------------------------------------------------- the head
def _projection(g: Graph, depth: int, width: int, quantized: list[str]) -> np.ndarray | None:
    """``proj`` (C, D) where the graph projects the [CLS] token after ``ln_post`` (OpenCLIP's ``pool_type='tok'``),
    None for a graph without one; ``ln_post`` must follow the last block (not the pooling)."""
    post = g.scope(g.n + "ln_post/")
    if not post:
        raise g.fail("no ln_post after the blocks: not an OpenCLIP VisionTransformer vitreg reads")
    src = g.producer.get(_scope_input(g, post))
    if src is None or not src.name.startswith(STACK.node(g, depth - 1)):
        raise g.fail("ln_post does not follow the last block (final_ln_after_pool, or a pooling before it)")
    top = re.compile("^" + re.escape(g.n) + r"[^/]+$")  # the tower's own nodes, outside its modules
    linears = [n for n in g.nodes if top.match(n.name) and n.op_type in LINEAR_OPS and g.value(n.input[1]) is not None]
    if not linears:
        return None
    if len(linears) != 1:
        raise g.fail(f"expected one projection after ln_post, found {len(linears)} MatMuls with constant weights")
    node = linears[0]
    if not _is_cls(g, node.input[0], {n.name for n in post}):
        raise g.fail("the projection is not of the [CLS] token after ln_post (pool_type avg / none is not read)")
    w, was_int8 = og.node_weight(g, node, "proj")  # (D, C)
    if w.shape[1] != width:
        raise g.fail(f"proj maps {w.shape[1]} features, not the width {width}")
    if was_int8:
        quantized.append(OUT + "proj")
    return np.ascontiguousarray(w.T)  # OpenCLIP's (C, D)


def _is_cls(g: Graph, name: str, post: set[str]) -> bool:
    """Whether ``name`` is token 0 of ln_post's output (``x[:, 0]``), through an int8 graph's activation quantiser."""
    node = g.producer.get(name)
    if node is not None and node.op_type == "DynamicQuantizeLinear":
        node = g.producer.get(node.input[0])
    if node is None or node.op_type != "Gather" or g.attr(node, "axis", 0) != 1:
        return False
    index = g.value(node.input[1])
    if index is None or index.size != 1 or int(index.reshape(-1)[0]) != 0:
        return False
    src = g.producer.get(node.input[0])
    return src is not None and src.name in post


# ------------------------------------------------------------------------------------------------ the format
def _preprocessing(cfg: ModelConfig, path: Path) -> str:
    """``cfg``'s mean/std (and resize) from a config beside the graph; returns where they came from."""
    from vitreg.models.load.formats.openclip import processor

    oc = path.parent / "open_clip_config.json"
    if oc.is_file():
        data = read_json(oc)
        model_cfg = data.get("model_cfg", data)
        vision = model_cfg.get("vision_cfg") if isinstance(model_cfg, dict) else None
        vision = vision if isinstance(vision, dict) else {}
        pre = data.get("preprocess_cfg")
        pre = pre if isinstance(pre, dict) else {}
        default = mean_std({"image_mean": vision.get("image_mean"), "image_std": vision.get("image_std")}, OPENAI)
        cfg.mean, cfg.std = mean_std({"image_mean": pre.get("mean"), "image_std": pre.get("std")}, default)
        cfg.processor = processor(pre)
        return f"mean/std and resize from {oc.name} beside it"
    pre, where = og.preprocessor_beside(path, "CLIPImageProcessor")
    if pre:
        cfg.mean, cfg.std = mean_std(pre, OPENAI)
        with_processor(cfg, pre, "CLIPImageProcessor", path.parent / "preprocessor_config.json")
        return where
    return "mean/std: OpenCLIP's default, OpenAI's (no open_clip_config.json or preprocessor_config.json beside it)"


def _model_config(tower: OnnxTower, path: Path) -> ModelConfig:
    """The timm ViT the graph states (OpenCLIP's tower layout, through :func:`.openclip.tower_config`)."""
    c = tower.config
    vision = {k: c[k] for k in ("width", "layers", "head_width", "patch_size", "image_size", "mlp_ratio")}
    cfg = tower_config(f"onnx:{path.name}", vision, bool(c["quick_gelu"]), "", str(path))
    cfg.norm_eps = float(c["layer_norm_eps"])
    if c["output_dim"]:  # the graph's output, the projected [CLS], is the model's: proj is timm's head (no bias)
        cfg.num_classes, cfg.global_pool = int(c["output_dim"]), "token"
    where = _preprocessing(cfg, path)  # with_processor may note the input size it takes from the processor's crop
    cfg.source = og.source(tower, "an OpenCLIP VisionTransformer", where) + cfg.source
    return cfg


def _key(path: Path, *beside: str) -> tuple:
    """A file's identity (and that of the configs beside it): its path, mtime and size."""
    files = [path, *(path.parent / b for b in beside)]
    return tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.is_file())


_CLAIMS: dict[tuple, bool] = {}
_CONFIGS: dict[tuple, ModelConfig] = {}


def _claims_file(path: Path) -> bool:
    """A ``.onnx`` file whose tensor names are OpenCLIP's (read once per file version; an unreadable file is left to
    the transformers families' format, which says why)."""
    if path.suffix != ".onnx" or not path.is_file():
        return False
    key = _key(path)
    if key not in _CLAIMS:
        _CLAIMS.clear()
        _CLAIMS[key] = _names_are_openclips(path)
    return _CLAIMS[key]


def _names_are_openclips(path: Path) -> bool:
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # onnx missing, or not a readable file: not claimed here
        return False
    names = [t.name for t in graph.initializer] + [o for n in graph.node if n.op_type == "Identity" for o in n.output]
    return any(TENSOR_ROOT.match(x) for x in names)


def _read_file(path: Path) -> tuple[ModelConfig, Layout]:
    """The timm ViT the graph states, parsed once per version of the file and of the configs beside it."""
    import copy

    key = _key(path, *SIDECARS)
    if key not in _CONFIGS:
        _CONFIGS.clear()
        _CONFIGS[key] = _model_config(read_onnx(path), path)
    return copy.deepcopy(_CONFIGS[key]), LAYOUT


FORMAT = Format(
    key="onnx-openclip",
    resampling=OPENCLIP.said,
    preprocessing="an `open_clip_config.json` beside the file (its `preprocess_cfg`), else a "
    "`preprocessor_config.json` beside it (`CLIPImageProcessor`), else OpenCLIP's default (shorter side, centre crop, "
    "bicubic)",
    owner="open_clip_torch",
    what="an ONNX export of an OpenCLIP image tower (`model.visual`, `open_clip.transformer.VisionTransformer`) "
    "with OpenCLIP's module names (`torch.onnx.export(..., dynamo=False)`; fp32 or onnxruntime dynamic int8, "
    "dequantised exactly; read with the `onnx` package, nothing executed; the architecture read from the graph, "
    "`proj` as the head; mean/std from an `open_clip_config.json` or `preprocessor_config.json` beside it, else "
    "OpenAI's)",
    command="vitreg diagnose --model openclip_visual.onnx --images photos --out runs/d",
    accepted="an ONNX export of an OpenCLIP VisionTransformer (model.visual) with OpenCLIP's module names (.onnx)",
    recognised_by="the .onnx suffix and OpenCLIP's tensor names transformer.resblocks.0.attn.in_proj_bias / ln_1",
    states_architecture="the graph: width, patch, grid, depth, heads (q's Reshape), scale, eps, QuickGELU or GELU, "
    "proj",
    order=59,  # before the transformers families' .onnx format, which claims every .onnx file
    claims_file=_claims_file,
    suffixes=(".onnx",),
    read_file=_read_file,
    read_weights=lambda path: read_onnx(path).state_dict,  # the initialisers, int8 dequantised, in OpenCLIP's keys
    layout=LAYOUT,
)
