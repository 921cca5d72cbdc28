"""ONNX exports of a ``transformers`` CLIP vision tower, read as weights: the graph's initialisers, with the ``onnx``
package alone (no runtime, nothing executed).

What is read, and from where in the graph (exports by ``torch.onnx.export(..., dynamo=False)``, ``optimum``, and the
same graphs after ``onnxruntime.quantization.quantize_dynamic``; their node names keep transformers' module paths,
``/vision_model/encoder/layers.0/self_attn/q_proj/MatMul``):

- width, patch size and the position grid from the patch convolution and the position embedding; the depth from the
  layers the node names hold; the image size from the input's static shape where it has one (else from the grid);
- the number of heads from the attention's Reshape constants (``(B, N, heads, head_dim)``, where one of the two may
  be -1) and the attention scale from its Mul constants, which must multiply to ``1/sqrt(head_dim)``;
- the LayerNorm epsilon (a ``LayerNormalization`` attribute, or the constant added to the variance when the export
  spells the norm out) and the MLP activation (``x * sigmoid(1.702 x)``: QuickGELU; ``Erf`` or an exact ``Gelu``: GELU);
- every Linear: a float ``MatMul``/``Gemm`` weight, or an int8/uint8 ``MatMulInteger`` weight dequantised exactly as
  onnxruntime's dynamic quantisation defines it, ``W = (q - zero_point) * scale`` per output column (or per tensor);
  the same for a ``ConvInteger`` patch embedding (per output channel) and a ``DequantizeLinear``'d embedding.

What the graph does not state is refused with a one-line :class:`CheckpointError` naming the file, never guessed.
Graphs of other transformers families (SigLIP, ViT, DeiT, DINOv2, DINOv3) are refused: each states its architecture
differently (SigLIP's pooling head goes through ``nn.MultiheadAttention``'s fused ``in_proj``, DINOv2 resamples its
position table inside the graph, DINOv3 computes its RoPE there) and needs a reader of its own.

As a format (:data:`FORMAT`): recognised by the ``.onnx`` suffix; the architecture read from the graph as above; onto
timm through transformers CLIP's layout (:mod:`.hf_clip`), since the weights come out in transformers' keys.
The preprocessing (mean and std) is not in a graph: it comes from a ``preprocessor_config.json`` beside the file
(optimum writes one) or else is transformers' ``CLIPImageProcessor`` default (OpenAI's statistics), and the model's
``source`` says which.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitreg.errors import CheckpointError
from vitreg.models.formats.base import Format, Layout
from vitreg.models.formats.hf_clip import LAYOUT as CLIP_LAYOUT
from vitreg.models.formats.hf_clip import clip_config

if TYPE_CHECKING:
    import torch

    from vitreg.models.presets import ModelConfig

ACCEPTED = (
    "an ONNX export of a transformers CLIP vision tower (CLIPVisionModel / CLIPVisionModelWithProjection, fp32 or "
    "onnxruntime dynamic int8) whose node names keep the module paths (torch.onnx.export(..., dynamo=False), optimum)"
)
LINEARS = ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/out_proj", "mlp/fc1", "mlp/fc2")
QUICK_GELU = 1.702
OUT = "vision_model."  # the prefix of the keys produced (transformers' CLIPVisionModel state dict)


@dataclass
class OnnxClip:
    """What a CLIP vision graph states: a transformers ``CLIPVisionConfig`` as a dict, and the tower's weights in
    transformers' keys (``vision_model.*``), fp32."""

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    quantized: list[str] = field(default_factory=list)  # the tensors that were int8 in the file
    opset: int = 0
    producer: str = ""


class _Graph:
    """Lookups over one graph: tensors by name (initialisers, Constant outputs, through Identity nodes) and nodes."""

    def __init__(self, model: Any, path: Path) -> None:
        from onnx import numpy_helper

        self.path = path
        self.graph = model.graph
        self._to_array = numpy_helper.to_array
        self.inits = {t.name: t for t in self.graph.initializer}
        self.nodes = list(self.graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self._cache: dict[str, np.ndarray | None] = {}
        # the tower's own prefix: "vision_model." in a CLIPVisionModelWithProjection export, "" in some others
        cls = next((n for n in self.inits if n.endswith("embeddings.class_embedding")), "")
        self.t = cls.removesuffix("embeddings.class_embedding")  # tensor names: f"{t}encoder.layers.0..."
        self.n = "/" + self.t.replace(".", "/")  # node names: f"{n}encoder/layers.0/..."
        self.layer = re.compile("^" + re.escape(self.n) + r"encoder/layers\.(\d+)/")

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}")

    def value(self, name: str) -> np.ndarray | None:
        """The constant tensor ``name`` (an initialiser, a Constant's output, or either through Identity nodes)."""
        if name in self._cache:
            return self._cache[name]
        out: np.ndarray | None = None
        if name in self.inits:
            out = self._to_array(self.inits[name])
        else:
            node = self.producer.get(name)
            if node is not None and node.op_type == "Constant":
                attr = next((a for a in node.attribute if a.name == "value"), None)
                out = self._to_array(attr.t) if attr is not None else None
            elif node is not None and node.op_type == "Identity":
                out = self.value(node.input[0])
        self._cache[name] = out
        return out

    def floats(self, name: str) -> np.ndarray:
        v = self.value(name)
        if v is None or v.dtype.kind != "f":
            raise self.fail(f"the graph has no float tensor {name!r}; accepted: {ACCEPTED}")
        return v.astype(np.float32)

    def ints(self, name: str) -> list[int | None]:
        """The integers of a shape tensor where the graph fixes them (None where it is computed at run time):
        a constant, or a Concat of constants and Unsqueeze'd constants."""
        v = self.value(name)
        if v is not None:
            return [int(x) for x in np.asarray(v).reshape(-1)]
        node = self.producer.get(name)
        if node is None:
            return [None]
        if node.op_type == "Concat":
            return [x for i in node.input for x in self.ints(i)]
        if node.op_type == "Unsqueeze":
            return self.ints(node.input[0])
        return [None]

    def scope(self, prefix: str, ops: tuple[str, ...] | None = None) -> list[Any]:
        return [n for n in self.nodes if n.name.startswith(prefix) and (ops is None or n.op_type in ops)]

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        from onnx import helper

        a = next((a for a in node.attribute if a.name == name), None)
        return default if a is None else helper.get_attribute_value(a)


def read_onnx_clip(path: str | Path) -> OnnxClip:
    """The CLIP vision tower in ONNX file ``path``: its config and fp32 weights (CheckpointError when the graph is not
    one, or does not state what vitreg needs)."""
    path = Path(path)
    try:
        import onnx
    except ImportError:
        raise CheckpointError(f"{path}: reading ONNX files needs the onnx package (pip install onnx)") from None
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as err:  # protobuf's DecodeError and onnx's own errors
        detail = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"{path}: not a readable ONNX file ({detail})") from None
    g = _Graph(model, path)
    if g.value(g.t + "embeddings.class_embedding") is None or g.value(g.t + "pre_layrnorm.weight") is None:
        raise g.fail(f"not a CLIP vision tower (no embeddings.class_embedding, pre_layrnorm); accepted: {ACCEPTED}")
    if not g.scope(g.n + "encoder/layers."):
        raise g.fail(
            "the graph's node names do not keep transformers' module paths (an export by torch.onnx's dynamo "
            f"exporter?): re-export with torch.onnx.export(..., dynamo=False) or optimum; accepted: {ACCEPTED}"
        )
    sd: dict[str, torch.Tensor] = {}  # transformers' keys, whatever the export's own prefix
    quantized: list[str] = []
    emb = "embeddings."
    sd[OUT + emb + "class_embedding"] = _tensor(g.floats(g.t + emb + "class_embedding"))
    sd[OUT + emb + "patch_embedding.weight"] = _tensor(_patch_weight(g, quantized))
    sd[OUT + emb + "position_embedding.weight"] = _tensor(_embedding(g, emb + "position_embedding.weight", quantized))
    for norm in ("pre_layrnorm", "post_layernorm"):
        for p in ("weight", "bias"):
            sd[f"{OUT}{norm}.{p}"] = _tensor(g.floats(f"{g.t}{norm}.{p}"))
    depth = _depth(g)
    for i in range(depth):
        base = f"encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            for p in ("weight", "bias"):
                sd[f"{OUT}{base}{norm}.{p}"] = _tensor(g.floats(f"{g.t}{base}{norm}.{p}"))
        for lin in LINEARS:
            key = base + lin.replace("/", ".")
            weight, was_int8 = _linear_weight(g, f"{g.n}encoder/layers.{i}/{lin}/")
            sd[OUT + key + ".weight"] = _tensor(weight)
            sd[OUT + key + ".bias"] = _tensor(g.floats(g.t + key + ".bias"))
            if was_int8:
                quantized.append(OUT + key + ".weight")
    config = _config(g, sd, depth)
    producer = f"{model.producer_name} {model.producer_version}".strip()
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxClip(config=config, state_dict=sd, quantized=quantized, opset=opset, producer=producer)


def _tensor(a: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _depth(g: _Graph) -> int:
    layers = {int(m.group(1)) for n in g.nodes if (m := g.layer.match(n.name))}
    if not layers or layers != set(range(max(layers) + 1)):
        raise g.fail(f"the encoder layers in the graph are not numbered 0..N-1 ({sorted(layers)[:6]}...)")
    return max(layers) + 1


def _dequantize(g: _Graph, q: np.ndarray, zero: np.ndarray, scale: np.ndarray, axis: int, what: str) -> np.ndarray:
    """``(q - zero_point) * scale``, per tensor (scalar scale) or per slice along ``axis`` (ONNX's definition)."""
    zero, scale = np.asarray(zero), np.asarray(scale, dtype=np.float32)
    if scale.size != 1:
        if scale.size != q.shape[axis] or zero.size not in (1, scale.size):
            raise g.fail(f"{what}: scale of shape {scale.shape} fits no axis of the int8 weight {q.shape}")
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.size > 1 else zero
    return (q.astype(np.int32) - zero.astype(np.int32)).astype(np.float32) * scale


def _quant_params(g: _Graph, q_name: str, zero_name: str | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Zero point and scale of an int8 weight: onnxruntime's quantiser names them ``<weight>_zero_point`` and
    ``<weight>_scale`` beside ``<weight>_quantized``."""
    base = q_name.removesuffix("_quantized")
    scale = g.value(base + "_scale")
    zero = g.value(zero_name) if zero_name else g.value(base + "_zero_point")
    if scale is None:
        raise g.fail(
            f"{what}: the int8 weight {q_name!r} has no {base + '_scale'!r} initialiser (not onnxruntime's "
            "dynamic quantisation)"
        )
    return (np.zeros(1, np.int32) if zero is None else zero), scale


def _linear_weight(g: _Graph, prefix: str) -> tuple[np.ndarray, bool]:
    """The (out, in) weight of the Linear whose nodes live under ``prefix``, and whether it was int8."""
    nodes = g.scope(prefix, ("MatMul", "MatMulInteger", "Gemm"))
    if len(nodes) != 1:
        raise g.fail(f"expected one MatMul under {prefix}, found {len(nodes)}; accepted: {ACCEPTED}")
    node = nodes[0]
    what = prefix.strip("/")
    b = g.value(node.input[1])
    if b is None:
        raise g.fail(f"{what}: its weight is not a constant of the graph")
    if node.op_type == "MatMulInteger":
        zero, scale = _quant_params(g, node.input[1], node.input[3] if len(node.input) > 3 else None, what)
        return _dequantize(g, b, zero, scale, axis=1, what=what).T, True  # B is (in, out): per output column
    if node.op_type == "Gemm":
        if g.attr(node, "transA", 0):
            raise g.fail(f"{what}: a Gemm with transA is not a Linear")
        b = b if g.attr(node, "transB", 0) else b.T
        return b.astype(np.float32), False
    return b.astype(np.float32).T, False  # MatMul(x, B), B (in, out)


def _patch_weight(g: _Graph, quantized: list[str]) -> np.ndarray:
    name = g.t + "embeddings.patch_embedding.weight"
    convs = g.scope(g.n + "embeddings/patch_embedding/", ("Conv", "ConvInteger"))
    if len(convs) != 1:
        raise g.fail(f"expected one patch-embedding Conv, found {len(convs)}; accepted: {ACCEPTED}")
    conv = convs[0]
    kernel, strides = g.attr(conv, "kernel_shape"), g.attr(conv, "strides")
    if kernel is None or len(set(kernel)) != 1 or list(strides or []) != list(kernel):
        raise g.fail(f"the patch embedding is not a square patch convolution (kernel {kernel}, strides {strides})")
    if any(g.attr(conv, "pads", [0]) or [0]) or (len(conv.input) > 2 and conv.op_type == "Conv"):
        raise g.fail("the patch convolution has padding or a bias: not a CLIP patch embedding")
    w = g.value(conv.input[1])
    if w is None:
        raise g.fail("the patch convolution's weight is not a constant of the graph")
    if conv.op_type == "ConvInteger":
        zero, scale = _quant_params(g, conv.input[1], conv.input[3] if len(conv.input) > 3 else None, name)
        quantized.append(name)
        return _dequantize(g, w, zero, scale, axis=0, what=name)  # per output channel
    return w.astype(np.float32)


def _embedding(g: _Graph, name: str, quantized: list[str]) -> np.ndarray:
    """A float embedding table, or one stored int8 that a ``DequantizeLinear`` turns back into floats after the Gather
    (onnxruntime's quantised Gather): per tensor, or per channel (the table's last axis)."""
    name = g.t + name
    v = g.value(name)
    if v is not None and v.dtype.kind == "f":
        return v.astype(np.float32)
    q = g.value(name + "_quantized")
    if q is None:
        raise g.fail(f"the graph has no float or int8 tensor {name!r}; accepted: {ACCEPTED}")
    zero, scale = _quant_params(g, name + "_quantized", None, name)
    quantized.append(name)
    return _dequantize(g, q, zero, scale, axis=q.ndim - 1, what=name)


def _heads(g: _Graph, width: int) -> tuple[int, int]:
    """Heads and head width from the (B, N, heads, head_dim) Reshape of q, the same in every layer."""
    found = set()
    for n in g.scope(g.n + "encoder/layers.", ("Reshape",)):
        src = g.producer.get(n.input[0])
        if src is None or "/self_attn/q_proj/" not in src.name:
            continue
        shape = g.ints(n.input[1])
        if len(shape) != 4 or shape[3] is None or shape[2] is None:
            raise g.fail(f"{n.name}: the attention's head split is not fixed in the graph ({shape})")
        heads, head_dim = shape[2], shape[3]
        if heads == -1 and head_dim > 0 and width % head_dim == 0:
            heads = width // head_dim
        elif head_dim == -1 and heads > 0 and width % heads == 0:
            head_dim = width // heads
        found.add((heads, head_dim))
    if len(found) != 1:
        raise g.fail(f"cannot read the number of heads from the attention's Reshape constants ({sorted(found)})")
    heads, head_dim = found.pop()
    if heads < 1 or heads * head_dim != width:
        raise g.fail(f"the attention splits width {width} into {heads} heads of {head_dim}")
    return heads, head_dim


def _check_scale(g: _Graph, head_dim: int) -> None:
    """The attention's scalar Mul constants must multiply to 1/sqrt(head_dim) (one on q, or the square root on q and
    on k as SDPA exports it), in every layer."""
    per_layer: dict[int, list[float]] = {}
    for n in g.scope(g.n + "encoder/layers.", ("Mul", "Div")):
        m = g.layer.match(n.name)
        if m is None or "/self_attn/" not in n.name or any(s in n.name for s in ("_proj/", "_quant")):
            continue
        consts = [v for i in n.input if (v := g.value(i)) is not None and v.size == 1 and v.dtype.kind == "f"]
        for c in consts:
            value = float(c.reshape(-1)[0])
            per_layer.setdefault(int(m.group(1)), []).append(value if n.op_type == "Mul" else 1.0 / value)
    want = head_dim**-0.5
    bad = {i: s for i, s in per_layer.items() if not math.isclose(math.prod(s), want, rel_tol=1e-4)}
    if not per_layer or bad:
        got = math.prod(next(iter(bad.values()))) if bad else None
        raise g.fail(f"the attention scale is not stated as 1/sqrt(head_dim) = {want:.4g} (found {got})")


def _norm_eps(g: _Graph) -> float:
    """The LayerNorms' epsilon: a LayerNormalization attribute, or the scalar added to the variance."""
    found: set[float] = set()
    for n in g.nodes:
        if not any(s in n.name for s in ("layer_norm", "layrnorm", "layernorm")):
            continue
        if n.op_type == "LayerNormalization":
            found.add(round(float(g.attr(n, "epsilon", 1e-5)), 12))
        elif n.op_type == "Add":
            src = [g.producer.get(i) for i in n.input]
            if any(s is not None and s.op_type == "ReduceMean" for s in src):
                found |= {round(float(v.reshape(-1)[0]), 12) for i in n.input if (v := g.value(i)) is not None}
    if len(found) != 1:
        raise g.fail(f"cannot read one LayerNorm epsilon from the graph (found {sorted(found)})")
    return float(f"{np.float32(found.pop()):.7g}")  # 9.999999747e-06 (fp32 of 1e-5) -> 1e-05


def _activation(g: _Graph) -> str:
    """``quick_gelu`` (x * sigmoid(1.702 x)) or ``gelu`` (Erf, or an exact Gelu op), the same in every layer."""
    kinds = set()
    for i in range(_depth(g)):
        nodes = g.scope(f"{g.n}encoder/layers.{i}/mlp/activation_fn/")
        ops = {n.op_type for n in nodes}
        consts = {
            round(float(v.reshape(-1)[0]), 4)
            for n in nodes
            if n.op_type == "Mul"
            for x in n.input
            if (v := g.value(x)) is not None and v.size == 1
        }
        if "Sigmoid" in ops and QUICK_GELU in consts:
            kinds.add("quick_gelu")
        elif "Erf" in ops or any(
            n.op_type == "Gelu" and g.attr(n, "approximate", b"none") in (b"none", "none") for n in nodes
        ):
            kinds.add("gelu")
        else:
            kinds.add(f"unknown ({', '.join(sorted(ops)) or 'no nodes'})")
    if len(kinds) != 1 or next(iter(kinds)).startswith("unknown"):
        raise g.fail(f"the MLP activation is not QuickGELU or exact GELU in every layer ({sorted(kinds)})")
    return kinds.pop()


def _image_size(g: _Graph, patch: int, positions: int) -> int:
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise g.fail(f"{positions} position embeddings are not [CLS] + a square grid")
    size = grid * patch
    inputs = [i for i in g.graph.input if i.name not in g.inits]
    if len(inputs) != 1:
        raise g.fail(f"expected one image input, found {[i.name for i in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (3, None):
        raise g.fail(f"the input {inputs[0].name!r} is not (B, 3, H, W): {dims}")
    fixed = [d for d in dims[2:] if d is not None]
    if any(d != size for d in fixed):
        raise g.fail(f"the input is {dims[2]}x{dims[3]} but the position embedding is for {size}x{size}")
    return size


def _config(g: _Graph, sd: dict[str, torch.Tensor], depth: int) -> dict[str, Any]:
    """The transformers CLIPVisionConfig that the graph states."""
    patch_w = sd[OUT + "embeddings.patch_embedding.weight"]  # (C, 3, p, p)
    width, patch = int(patch_w.shape[0]), int(patch_w.shape[-1])
    heads, head_dim = _heads(g, width)
    _check_scale(g, head_dim)
    fc1 = sd[OUT + "encoder.layers.0.mlp.fc1.weight"]  # (hidden, C)
    positions = int(sd[OUT + "embeddings.position_embedding.weight"].shape[0])
    return {
        "model_type": "clip_vision_model",
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "intermediate_size": int(fc1.shape[0]),
        "patch_size": patch,
        "image_size": _image_size(g, patch, positions),
        "layer_norm_eps": _norm_eps(g),
        "hidden_act": _activation(g),
    }


def preprocessor_beside(path: Path) -> tuple[dict[str, Any], str]:
    """The ``preprocessor_config.json`` next to an ONNX file (optimum's layout), and where the mean/std came from."""
    pre = path.parent / "preprocessor_config.json"
    if pre.is_file():
        try:
            data = json.loads(pre.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise CheckpointError(f"{pre}: not a readable JSON config ({err})") from None
        if isinstance(data, dict) and isinstance(data.get("image_mean"), list):
            return data, f"mean/std from {pre.name}"
    return {}, "mean/std: CLIPImageProcessor defaults (no preprocessor_config.json beside the file)"


_CONFIGS: dict[tuple, ModelConfig] = {}  # the file's and its preprocessor's (path, mtime, size) -> config


def onnx_config(path: Path) -> ModelConfig:
    """An ONNX export of a transformers CLIP vision tower -> its timm ViT (every size read from the graph). The graph
    is parsed once per file version: checking a model and loading it read the same config."""
    import copy

    pre = path.parent / "preprocessor_config.json"
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in (path, pre) if p.is_file())
    if key not in _CONFIGS:
        _CONFIGS.clear()  # one file at a time: configs are small, but a long session sees many files
        _CONFIGS[key] = _read_config(path)
    return copy.deepcopy(_CONFIGS[key])


def _read_config(path: Path) -> ModelConfig:
    graph = read_onnx_clip(path)
    pre, where = preprocessor_beside(path)
    kind = f"int8 ({len(graph.quantized)} tensors dequantised)" if graph.quantized else "fp32"
    source = f"ONNX export of a transformers CLIP vision tower, {kind}; {where}"
    return clip_config(graph.config, path, f"onnx:{path.name}", source, pre)


def _read_file(path: Path) -> tuple[ModelConfig, Layout]:
    return onnx_config(path), CLIP_LAYOUT


FORMAT = Format(
    key="onnx-clip",
    owner="onnx",
    what="an ONNX export of a `transformers` CLIP vision tower (`torch.onnx.export(..., dynamo=False)` or optimum; "
    "fp32 or onnxruntime dynamic int8, dequantised exactly; read with the `onnx` package, nothing executed; the "
    "architecture read from the graph; mean/std from a `preprocessor_config.json` beside it, else CLIP's)",
    command="vitreg diagnose --model clip_vision.onnx --images photos --out runs/d",
    accepted="an ONNX export of a transformers CLIP vision tower (.onnx)",
    recognised_by="the .onnx suffix; a graph with embeddings.class_embedding + pre_layrnorm",
    states_architecture="the graph: width, patch, grid, depth, heads (Reshape), scale, eps, activation",
    order=60,
    claims_file=lambda path: path.suffix == ".onnx",
    read_file=_read_file,
    layout=CLIP_LAYOUT,
)
