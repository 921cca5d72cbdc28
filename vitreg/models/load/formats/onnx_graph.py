"""Reading a transformers vision tower out of an ONNX graph, whatever its family (not a format itself): the graph's
tensors and nodes (:class:`Graph`), int8 weights dequantised as onnxruntime's dynamic quantisation defines them, and
the architecture stated by the graph (depth, heads, attention scale, LayerNorm epsilon, MLP activation, image size).
The family readers (:mod:`.onnx_clip` for CLIP and the dispatch, :mod:`.onnx_vit` for ViT, DeiT and DINOv2,
:mod:`.onnx_dinov3` for DINOv3, :mod:`.onnx_siglip` for SigLIP) say where their modules are, by the module paths
transformers gives them, which ``torch.onnx.export(..., dynamo=False)`` and optimum keep in the node names
(``/encoder/layers.0/self_attn/q_proj/MatMul``) and in the names of the initialisers they do not transform
(``encoder.layers.0.layer_norm1.weight``).

Nothing here executes the graph: every value is an initialiser or a ``Constant``. What the graph does not state is a
one-line :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitreg.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from vitreg.models.load.formats.base import Layout
    from vitreg.models.presets import ModelConfig

QUICK_GELU = 1.702


@dataclass
class OnnxTower:
    """What a vision graph states: the transformers config of its family as a dict (what its ``config.json`` would
    say), and the tower's weights in that family's transformers keys, fp32."""

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    quantized: list[str] = field(default_factory=list)  # the tensors that were int8 in the file
    opset: int = 0
    producer: str = ""
    family: str = "CLIP"


def load(path: Path) -> Any:
    """The ``onnx.ModelProto`` of ``path`` (its external data too)."""
    try:
        import onnx
    except ImportError:
        raise CheckpointError(f"{path}: reading ONNX files needs the onnx package (pip install onnx)") from None
    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as err:  # protobuf's DecodeError and onnx's own errors
        detail = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"{path}: not a readable ONNX file ({detail})") from None


def provenance(model: Any) -> tuple[int, str]:
    """The default-domain opset and the producer of a ModelProto."""
    producer = f"{model.producer_name} {model.producer_version}".strip()
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0), producer


class Graph:
    """Lookups over one graph: tensors by name (initialisers, Constant outputs, through Identity nodes) and nodes.

    ``t`` / ``n`` are the tower's own prefix in tensor names and in node names (``vision_model.`` /
    ``/vision_model/`` in a CLIPVisionModelWithProjection export, empty in most), set by :meth:`root`."""

    def __init__(self, model: Any, path: Path, accepted: str) -> None:
        from onnx import numpy_helper

        self.path = path
        self.accepted = accepted
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
        self.t = ""
        self.n = "/"

    def find(self, suffix: str) -> str | None:
        """The name of the tensor (an initialiser, or an Identity's output: the exporter shares equal tensors through
        Identity nodes) whose name ends with ``suffix``, None when there is none."""
        names = list(self.inits) + [o for n in self.nodes if n.op_type == "Identity" for o in n.output]
        return next((x for x in names if x.endswith(suffix) and (x == suffix or x[-len(suffix) - 1] == ".")), None)

    def root(self, marker: str) -> None:
        """Take the tower's prefix from the name of its tensor ``marker`` (``vision_model.embeddings.class_embedding``
        -> ``vision_model.``)."""
        name = self.find(marker) or marker
        self.t = name.removesuffix(marker)  # tensor names: f"{t}encoder.layers.0..."
        self.n = "/" + self.t.replace(".", "/")  # node names: f"{n}encoder/layers.0/..."

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
            raise self.fail(f"the graph has no float tensor {name!r}; accepted: {self.accepted}")
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


@dataclass(frozen=True)
class Stack:
    """Where one family's encoder layers are in a graph: the node path of the layers (``encoder/layers`` ->
    ``/encoder/layers.N/...``; the tensors under ``encoder.layers.N.``) and, under one layer, the module path of q's
    Linear (its Reshape splits the heads), of the attention (its scalar Mul is the scale) and of the MLP activation."""

    layers: str
    query: str
    attention: str
    activation: str

    def node(self, g: Graph, i: int, sub: str = "") -> str:
        return f"{g.n}{self.layers}.{i}/" + (f"{sub}/" if sub else "")

    def tensor(self, g: Graph, i: int, sub: str) -> str:
        return f"{g.t}{self.layers.replace('/', '.')}.{i}.{sub.replace('/', '.')}"

    def pattern(self, g: Graph) -> re.Pattern[str]:
        return re.compile("^" + re.escape(f"{g.n}{self.layers}.") + r"(\d+)/")

    def present(self, g: Graph) -> bool:
        return bool(g.scope(self.node(g, 0, self.query), ("MatMul", "MatMulInteger", "Gemm")))


#: The encoder of transformers' CLIP, which SigLIP shares: ``encoder.layers.N.`` with pre-norms ``layer_norm1/2``,
#: ``self_attn`` (q/k/v/out_proj) and ``mlp`` (fc1, fc2)
CLIP_STACK = Stack(
    layers="encoder/layers", query="self_attn/q_proj", attention="self_attn", activation="mlp/activation_fn"
)
CLIP_LINEARS = ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/out_proj", "mlp/fc1", "mlp/fc2")


def clip_layers(g: Graph, out: str, sd: dict[str, torch.Tensor], quantized: list[str]) -> int:
    """The CLIP-layout encoder's layers into ``sd`` under ``out`` + ``encoder.layers.N.`` (their norms and Linears);
    returns the depth."""
    n = depth(g, CLIP_STACK)
    for i in range(n):
        base = f"{out}encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            for p in ("weight", "bias"):
                sd[f"{base}{norm}.{p}"] = tensor(g.floats(CLIP_STACK.tensor(g, i, f"{norm}.{p}")))
        linears(g, CLIP_STACK, i, {lin.replace("/", "."): lin for lin in CLIP_LINEARS}, base, sd, quantized)
    return n


def tensor(a: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def depth(g: Graph, stack: Stack) -> int:
    pattern = stack.pattern(g)
    layers = {int(m.group(1)) for n in g.nodes if (m := pattern.match(n.name))}
    if not layers or layers != set(range(max(layers) + 1)):
        raise g.fail(f"the encoder layers in the graph are not numbered 0..N-1 ({sorted(layers)[:6]}...)")
    return max(layers) + 1


def no_module_paths(g: Graph) -> CheckpointError:
    return g.fail(
        "the graph's node names do not keep transformers' module paths (an export by torch.onnx's dynamo "
        f"exporter?): re-export with torch.onnx.export(..., dynamo=False) or optimum; accepted: {g.accepted}"
    )


def dequantize(g: Graph, q: np.ndarray, zero: np.ndarray, scale: np.ndarray, axis: int, what: str) -> np.ndarray:
    """``(q - zero_point) * scale``, per tensor (scalar scale) or per slice along ``axis`` (ONNX's definition)."""
    zero, scale = np.asarray(zero), np.asarray(scale, dtype=np.float32)
    if scale.size != 1:
        if scale.size != q.shape[axis] or zero.size not in (1, scale.size):
            raise g.fail(f"{what}: scale of shape {scale.shape} fits no axis of the int8 weight {q.shape}")
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.size > 1 else zero
    return (q.astype(np.int32) - zero.astype(np.int32)).astype(np.float32) * scale


def quant_params(g: Graph, q_name: str, zero_name: str | None, what: str) -> tuple[np.ndarray, np.ndarray]:
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


def linear_weight(g: Graph, prefix: str) -> tuple[np.ndarray, bool]:
    """The (out, in) weight of the Linear whose nodes live under ``prefix``, and whether it was int8."""
    nodes = g.scope(prefix, ("MatMul", "MatMulInteger", "Gemm"))
    if len(nodes) != 1:
        raise g.fail(f"expected one MatMul under {prefix}, found {len(nodes)}; accepted: {g.accepted}")
    return node_weight(g, nodes[0], prefix.strip("/"))


def node_weight(g: Graph, node: Any, what: str) -> tuple[np.ndarray, bool]:
    """The (out, in) weight of one ``MatMul`` / ``MatMulInteger`` / ``Gemm`` node (its constant second input), and
    whether it was int8; ``what`` names it in errors."""
    b = g.value(node.input[1])
    if b is None:
        raise g.fail(f"{what}: its weight is not a constant of the graph")
    if node.op_type == "MatMulInteger":
        zero, scale = quant_params(g, node.input[1], node.input[3] if len(node.input) > 3 else None, what)
        return dequantize(g, b, zero, scale, axis=1, what=what).T, True  # B is (in, out): per output column
    if node.op_type == "Gemm":
        if g.attr(node, "transA", 0):
            raise g.fail(f"{what}: a Gemm with transA is not a Linear")
        b = b if g.attr(node, "transB", 0) else b.T
        return b.astype(np.float32), False
    return b.astype(np.float32).T, False  # MatMul(x, B), B (in, out)


def linears(
    g: Graph, stack: Stack, i: int, subs: dict[str, str], out: str, sd: dict[str, torch.Tensor], quantized: list[str]
) -> None:
    """Layer ``i``'s Linears into ``sd``: ``subs`` maps each one's key under ``out`` (the family's transformers key of
    the layer, ``encoder.layer.0.``) to its module path in this graph (``attention/q_proj``)."""
    for key, sub in subs.items():
        weight, was_int8 = linear_weight(g, stack.node(g, i, sub))
        sd[f"{out}{key}.weight"] = tensor(weight)
        sd[f"{out}{key}.bias"] = tensor(g.floats(stack.tensor(g, i, sub) + ".bias"))
        if was_int8:
            quantized.append(f"{out}{key}.weight")


def patch_weight(g: Graph, scope: str, name: str, quantized: list[str], bias: bool) -> np.ndarray:
    """The (C, 3, p, p) weight of the patch convolution under node path ``scope`` (its tensor ``name``); a bias only
    where the family has one (``bias``)."""
    convs = g.scope(scope, ("Conv", "ConvInteger"))
    if len(convs) != 1:
        raise g.fail(f"expected one patch-embedding Conv, found {len(convs)}; accepted: {g.accepted}")
    conv = convs[0]
    kernel, strides = g.attr(conv, "kernel_shape"), g.attr(conv, "strides")
    if kernel is None or len(set(kernel)) != 1 or list(strides or []) != list(kernel):
        raise g.fail(f"the patch embedding is not a square patch convolution (kernel {kernel}, strides {strides})")
    if any(g.attr(conv, "pads", [0]) or [0]) or (not bias and len(conv.input) > 2 and conv.op_type == "Conv"):
        raise g.fail("the patch convolution has padding or a bias its family does not have")
    w = g.value(conv.input[1])
    if w is None:
        raise g.fail("the patch convolution's weight is not a constant of the graph")
    if conv.op_type == "ConvInteger":
        zero, scale = quant_params(g, conv.input[1], conv.input[3] if len(conv.input) > 3 else None, name)
        quantized.append(name)
        return dequantize(g, w, zero, scale, axis=0, what=name)  # per output channel
    return w.astype(np.float32)


def embedding(g: Graph, name: str, quantized: list[str]) -> np.ndarray:
    """A float embedding table, or one stored int8 that a ``DequantizeLinear`` turns back into floats after the Gather
    (onnxruntime's quantised Gather): per tensor, or per channel (the table's last axis)."""
    v = g.value(name)
    if v is not None and v.dtype.kind == "f":
        return v.astype(np.float32)
    q = g.value(name + "_quantized")
    if q is None:
        raise g.fail(f"the graph has no float or int8 tensor {name!r}; accepted: {g.accepted}")
    zero, scale = quant_params(g, name + "_quantized", None, name)
    quantized.append(name)
    return dequantize(g, q, zero, scale, axis=q.ndim - 1, what=name)


def heads(g: Graph, stack: Stack, width: int) -> tuple[int, int]:
    """Heads and head width from the (B, N, heads, head_dim) Reshape of q, the same in every layer."""
    found = set()
    query = f"/{stack.query}/"
    for n in g.scope(f"{g.n}{stack.layers}.", ("Reshape",)):
        src = g.producer.get(n.input[0])
        if src is None or query not in src.name:
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


def check_scale(g: Graph, stack: Stack, head_dim: int) -> None:
    """The attention's scalar Mul constants must multiply to 1/sqrt(head_dim) (one on q, or the square root on q and
    on k as SDPA exports it), in every layer; the Linears' own nodes (``*_proj/``, ``query/``) are not the attention's
    and int8 graphs' ``*_quant`` nodes scale activations."""
    per_layer: dict[int, list[float]] = {}
    pattern, attention = stack.pattern(g), f"/{stack.attention}/"
    linear = tuple(f"/{s}/" for s in ("q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "query", "key", "value"))
    for n in g.scope(f"{g.n}{stack.layers}.", ("Mul", "Div")):
        m = pattern.match(n.name)
        if m is None or attention not in n.name or any(s in n.name for s in linear) or "_quant" in n.name:
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


def norm_eps(g: Graph, names: tuple[str, ...]) -> float:
    """The LayerNorms' epsilon (the norms are the nodes whose path holds one of ``names``): a LayerNormalization
    attribute, or the scalar added to the variance."""
    found: set[float] = set()
    for n in g.nodes:
        if not any(s in n.name for s in names):
            continue
        if n.op_type == "LayerNormalization":
            found.add(round(float(g.attr(n, "epsilon", 1e-5)), 15))
        elif n.op_type == "Add":
            src = [g.producer.get(i) for i in n.input]
            if any(s is not None and s.op_type == "ReduceMean" for s in src):
                found |= {round(float(v.reshape(-1)[0]), 15) for i in n.input if (v := g.value(i)) is not None}
    if len(found) != 1:
        raise g.fail(f"cannot read one LayerNorm epsilon from the graph (found {sorted(found)})")
    return float(f"{np.float32(found.pop()):.7g}")  # 9.999999747e-06 (fp32 of 1e-5) -> 1e-05


def _activation_of(g: Graph, nodes: list[Any]) -> str:
    ops = {n.op_type for n in nodes}
    consts = {
        round(float(v.reshape(-1)[0]), 4)
        for n in nodes
        if n.op_type == "Mul"
        for x in n.input
        if (v := g.value(x)) is not None and v.size == 1
    }
    if "Sigmoid" in ops and QUICK_GELU in consts:
        return "quick_gelu"
    if "Erf" in ops or any(
        n.op_type == "Gelu" and g.attr(n, "approximate", b"none") in (b"none", "none") for n in nodes
    ):
        return "gelu"
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): transformers' gelu_pytorch_tanh / gelu_new, or a tanh Gelu op
    if ("Tanh" in ops and 0.0447 in consts) or any(
        n.op_type == "Gelu" and g.attr(n, "approximate", b"") in (b"tanh", "tanh") for n in nodes
    ):
        return "gelu_tanh"
    return f"unknown ({', '.join(sorted(ops)) or 'no nodes'})"


def activation(g: Graph, stack: Stack, n_layers: int, allowed: tuple[str, ...]) -> str:
    """The MLP activation, the same in every layer, among ``allowed`` (``quick_gelu``: x * sigmoid(1.702 x);
    ``gelu``: Erf or an exact Gelu op; ``gelu_tanh``: the tanh approximation)."""
    kinds = {_activation_of(g, g.scope(stack.node(g, i, stack.activation))) for i in range(n_layers)}
    if len(kinds) != 1 or next(iter(kinds)) not in allowed:
        names = {"quick_gelu": "QuickGELU", "gelu": "exact GELU", "gelu_tanh": "tanh-approximated GELU"}
        raise g.fail(
            f"the MLP activation is not {' or '.join(names[a] for a in allowed)} in every layer ({sorted(kinds)})"
        )
    return kinds.pop()


def image_size(g: Graph, patch: int, grid: int, resampled: bool = False) -> int:
    """The image size: the position grid's (``grid`` x ``grid`` patches), which a static input shape must equal
    unless the graph resamples the table to the input itself (``resampled``, DINOv2)."""
    size = grid * patch
    h, w = input_hw(g)
    if not resampled and any(d is not None and d != size for d in (h, w)):
        raise g.fail(f"the input is {h}x{w} but the position embedding is for {size}x{size}")
    return size


def input_hw(g: Graph) -> tuple[int | None, int | None]:
    """The image input's (H, W) where the graph fixes them (None: dynamic); the graph must take one (B, 3, H, W)."""
    inputs = [i for i in g.graph.input if i.name not in g.inits]
    if len(inputs) != 1:
        raise g.fail(f"expected one image input, found {[i.name for i in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (3, None):
        raise g.fail(f"the input {inputs[0].name!r} is not (B, 3, H, W): {dims}")
    return dims[2], dims[3]


def square_grid(g: Graph, positions: int, prefix: int, what: str) -> int:
    """The side of the square patch grid of a position table of ``positions`` rows, ``prefix`` of them not patches."""
    grid = math.isqrt(positions - prefix)
    if grid < 1 or grid * grid != positions - prefix:
        raise g.fail(f"{positions} position embeddings are not {what} + a square grid")
    return grid


def mlp_ratio(g: Graph, hidden: int, width: int) -> float:
    """``hidden / width`` as a config's ``mlp_ratio``, refused where ``int(width * ratio)`` would not give it back."""
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise g.fail(f"an MLP of {hidden} for width {width} is not stated exactly by an mlp_ratio")
    return ratio


def preprocessor_beside(path: Path, processor: str) -> tuple[dict[str, Any], str]:
    """The ``preprocessor_config.json`` next to an ONNX file (optimum's layout), and where the mean/std came from
    (``processor``: the family's transformers image processor, whose defaults apply without one)."""
    pre = path.parent / "preprocessor_config.json"
    if pre.is_file():
        try:
            data = json.loads(pre.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise CheckpointError(f"{pre}: not a readable JSON config ({err})") from None
        if isinstance(data, dict) and isinstance(data.get("image_mean"), list):
            return data, f"mean/std from {pre.name}"
    return {}, f"mean/std: {processor} defaults (no preprocessor_config.json beside the file)"


@dataclass(frozen=True)
class Family:
    """One transformers family read from ONNX: ``marks(g)`` tells its graphs by their tensor names; ``read(g)`` gives
    its transformers config (dict) and weights (transformers keys, fp32) and the int8 tensors it dequantised;
    ``model_config(tower, path)`` is the timm ViT the config describes, through that family's folder reader;
    ``layout`` maps the weights onto timm (that family's folder layout)."""

    name: str
    marks: Callable[[Graph], bool]
    read: Callable[[Graph], tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]]
    model_config: Callable[[OnnxTower, Path], ModelConfig]
    layout: Layout


def has(g: Graph, pattern: str) -> bool:
    """Whether some tensor name of the graph matches ``pattern`` (a regex searched in the name)."""
    names = list(g.inits) + [o for n in g.nodes if n.op_type == "Identity" for o in n.output]
    rx = re.compile(pattern)
    return any(rx.search(x) for x in names)


def source(tower: OnnxTower, what: str, where: str) -> str:
    """A model's ``source``: the family, fp32 or int8, and where its mean/std came from."""
    kind = f"int8 ({len(tower.quantized)} tensors dequantised)" if tower.quantized else "fp32"
    return f"ONNX export of {what}, {kind}; {where}"
