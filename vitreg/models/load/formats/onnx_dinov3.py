"""ONNX exports of a ``transformers`` DINOv3 vision tower (``DINOv3ViTModel``), read by the one ``.onnx`` format
(:mod:`.onnx_clip`) with the graph machinery of :mod:`.onnx_graph` (not a format itself).

DINOv3 has no position table: its RoPE is computed inside the graph from the input's size, under the node path
``/rope_embeddings/``. The arithmetic is transformers' (patch centres ``(arange(0.5, n) / n) * 2 - 1`` on an
``H/p x W/p`` grid, angles ``2 pi * coords * inv_freq``, tiled, cos and sin), and torch's exporter keeps every number
it uses as a constant: the frequencies ``inv_freq = 1 / theta ** arange(0, 1, 4 / head_dim)`` (1, 1, head_dim / 4)
(the period ``rope_theta`` is read back from them, and every frequency must be that theta's), ``2 pi``, the 0.5 / 1
of the coordinate ranges, the ``2 x - 1`` and the patch size that divides the input. Each is checked, and a graph
whose RoPE differs anywhere is refused; so is one exported in training mode (random coordinate augmentation: the
``pos_embed_shift`` / ``jitter`` / ``rescale`` of its config act in training only, and an eval graph has none).

The rest is read as for the other families: the patch convolution (with its bias) ``embeddings.patch_embeddings``,
``embeddings.cls_token`` and ``embeddings.register_tokens`` (1, R, C) (the number of registers; the embeddings'
Concat must put [CLS], then the registers, then the patches), the layers under ``/model/layer.N/`` (transformers 5;
``/layer.N/`` is accepted for transformers 4's naming, untested) with ``norm1`` / ``norm2``, ``layer_scale1.lambda1``
/ ``layer_scale2.lambda1`` (C,), ``attention/q_proj`` ... ``o_proj`` (each bias where the graph has one:
``query_bias``, ``key_bias``, ``value_bias``, ``proj_bias``), the MLP ``mlp/up_proj`` + ``down_proj`` (GELU) or,
gated, ``mlp/gate_proj`` too (SiLU), and the final ``norm``; heads from q's Reshape, the scale, the eps. The image
size is the input's static shape (no table states one): a graph whose height or width is dynamic is refused.

The weights come out in the keys of DINOv3's ``model.safetensors`` (``layer.N.``) and go through :mod:`.hf_dinov3`'s
layout onto timm's DINOv3 Eva; the config is what its ``config.json`` would state, read by its folder reader (which
refuses what timm cannot express: a key bias, an eps other than 1e-5); mean/std from a ``preprocessor_config.json``
beside the file, else ImageNet's (the DINOv3 image processor's default).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitreg.errors import CheckpointError
from vitreg.models.load.formats import hf_dinov3
from vitreg.models.load.formats import onnx_graph as og
from vitreg.models.load.formats.onnx_graph import Family, Graph, OnnxTower, Stack

if TYPE_CHECKING:
    import torch

    from vitreg.models.presets import ModelConfig

#: transformers 5 names the blocks ``model.layer.N`` in memory (what the exporter sees), transformers 4 ``layer.N``
STACKS = tuple(
    Stack(layers=layers, query="attention/q_proj", attention="attention", activation="mlp/act_fn")
    for layers in ("model/layer", "layer")
)
ATTENTION = {"q_proj": "query_bias", "k_proj": "key_bias", "v_proj": "value_bias", "o_proj": "proj_bias"}
RANDOM = ("RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Multinomial", "Bernoulli")
PROCESSOR = "DINOv3ViTImageProcessorFast"


def _is_dinov3(g: Graph) -> bool:
    """[CLS] + registers + LayerScale, and a patch convolution without DINOv2's ``projection`` module."""
    return (
        g.find("embeddings.register_tokens") is not None
        and g.find("embeddings.cls_token") is not None
        and og.has(g, r"layer\.0\.layer_scale1\.lambda1$")
        and og.has(g, r"embeddings\.patch_embeddings\.(weight|bias)")
        and not og.has(g, r"embeddings\.patch_embeddings\.projection\.")
    )


def _read(g: Graph) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    g.root("embeddings.register_tokens")
    stack = next((s for s in STACKS if s.present(g)), None)
    if stack is None:
        if g.scope(g.n + "embeddings/") or any(g.scope(f"{g.n}{s.layers}.") for s in STACKS):
            wanted = " or ".join(f"{g.n}{s.layers}.0/{s.query}/MatMul" for s in STACKS)
            raise g.fail(f"no {wanted} in the DINOv3 graph (an encoder vitreg does not read); accepted: {g.accepted}")
        raise og.no_module_paths(g)
    sd: dict[str, torch.Tensor] = {}
    quantized: list[str] = []
    emb = "embeddings."
    cls = g.floats(g.t + emb + "cls_token")  # (1, 1, C)
    registers = g.floats(g.t + emb + "register_tokens")  # (1, R, C)
    sd[emb + "cls_token"], sd[emb + "register_tokens"] = og.tensor(cls), og.tensor(registers)
    proj = emb + "patch_embeddings."
    patch = og.patch_weight(g, g.n + proj.replace(".", "/"), g.t + proj + "weight", quantized, bias=True)
    sd[proj + "weight"] = og.tensor(patch)  # (C, 3, p, p)
    sd[proj + "bias"] = og.tensor(g.floats(g.t + proj + "bias"))
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    if registers.ndim != 3 or registers.shape[0] != 1 or registers.shape[2] != width or cls.shape != (1, 1, width):
        raise g.fail(f"[CLS] {cls.shape} and the registers {registers.shape} are not (1, n, {width})")
    _token_order(g)
    for p in ("weight", "bias"):
        sd[f"norm.{p}"] = og.tensor(g.floats(f"{g.t}norm.{p}"))
    depth = og.depth(g, stack)
    gated = bool(g.scope(stack.node(g, 0, "mlp/gate_proj"), ("MatMul", "MatMulInteger", "Gemm")))
    mlp = ("gate_proj", "up_proj", "down_proj") if gated else ("up_proj", "down_proj")
    biases: dict[str, set[bool]] = {}
    for i in range(depth):
        base = f"layer.{i}."
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "layer_scale1.lambda1",
                     "layer_scale2.lambda1"):  # fmt: skip
            sd[base + name] = og.tensor(g.floats(stack.tensor(g, i, name)))  # (C,)
        for sub in [f"attention/{a}" for a in ATTENTION] + [f"mlp/{m}" for m in mlp]:
            key = base + sub.replace("/", ".")
            weight, was_int8 = og.linear_weight(g, stack.node(g, i, sub))
            sd[key + ".weight"] = og.tensor(weight)  # (out, in)
            if was_int8:
                quantized.append(key + ".weight")
            bias = _bias(g, stack, i, sub)
            if bias is not None:
                sd[key + ".bias"] = og.tensor(bias)
            biases.setdefault(ATTENTION.get(sub.rsplit("/", 1)[1], "mlp_bias"), set()).add(bias is not None)
    mixed = sorted(k for k, v in biases.items() if len(v) != 1)
    if mixed:
        raise g.fail(f"the layers do not agree on {', '.join(mixed)}: some Linears have a bias, some not")
    heads, head_dim = og.heads(g, stack, width)
    og.check_scale(g, stack, head_dim)
    config: dict[str, Any] = {
        "model_type": "dinov3_vit",
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "intermediate_size": int(sd[f"layer.0.mlp.{mlp[-2]}.weight"].shape[0]),
        "patch_size": patch_size,
        "image_size": _image_size(g, patch_size),
        "num_channels": 3,
        "layer_norm_eps": og.norm_eps(g, ("/norm1/", "/norm2/", "/norm/")),
        "hidden_act": _activation(g, stack, depth, gated),
        "use_gated_mlp": gated,
        "rope_theta": _rope_theta(g, stack, depth, patch_size, head_dim),
        # an initial value: only whether there is LayerScale matters, its gammas are the weights read above
        "layerscale_value": 1.0,
        "num_register_tokens": int(registers.shape[1]),
        **{k: v.pop() for k, v in biases.items()},
    }
    return config, sd, quantized


def _bias(g: Graph, stack: Stack, i: int, sub: str) -> np.ndarray | None:
    """The (out,) bias of layer ``i``'s Linear ``sub``, None where it has none: then no Add may follow its MatMul
    (an Add whose constant is not the bias tensor would be a bias vitreg does not read)."""
    name = stack.tensor(g, i, sub) + ".bias"
    if g.value(name) is not None:
        return g.floats(name)
    if g.scope(stack.node(g, i, sub), ("Add",)):
        raise g.fail(f"{stack.node(g, i, sub)}: an Add after the Linear without a {name!r} tensor")
    return None


def _through(g: Graph, name: str) -> str:
    """The tensor that ``name`` broadcasts or casts (through Expand / Cast / Identity nodes)."""
    for _ in range(16):
        node = g.producer.get(name)
        if node is None or node.op_type not in ("Expand", "Cast", "Identity"):
            return name
        name = node.input[0]
    return name


def _token_order(g: Graph) -> None:
    """The embeddings' Concat of the tokens (B, 1 + R + N, C) is [CLS], the registers, the patches: vitreg's
    order, which timm's Eva computes the same way."""
    cls, registers = g.find("embeddings.cls_token"), g.find("embeddings.register_tokens")
    joins = [n for n in g.scope(g.n + "embeddings/", ("Concat",)) if any(_through(g, i) == cls for i in n.input)]
    sources = [_through(g, i) for i in joins[0].input] if len(joins) == 1 else []
    if len(sources) != 3 or sources[:2] != [cls, registers] or g.value(sources[2]) is not None:
        raise g.fail("the embeddings do not concatenate [CLS], the registers and the patches in that order")


def _image_size(g: Graph, patch: int) -> int:
    """The input's static square size: DINOv3 has no position table, so only the input shape states one."""
    h, w = og.input_hw(g)
    if h is None or w is None:
        raise g.fail(
            f"the input's height and width are dynamic (H {h}, W {w}): a DINOv3 graph has no position table, so only a "
            "static input shape states its image size (export with dynamic_axes on the batch only)"
        )
    if h != w or h % patch:
        raise g.fail(f"the input is {h}x{w}: not a square of whole {patch}-pixel patches")
    return h


def _activation(g: Graph, stack: Stack, depth: int, gated: bool) -> str:
    """``gelu`` (Erf: the plain MLP's) or, for the gated MLP, ``silu``: x * sigmoid(x), a Sigmoid and a Mul with no
    constant (1.702 would be QuickGELU) in every layer."""
    if not gated:
        return og.activation(g, stack, depth, ("gelu",))
    for i in range(depth):
        nodes = g.scope(stack.node(g, i, stack.activation))
        consts = [v for n in nodes for x in n.input if (v := g.value(x)) is not None]
        if sorted(n.op_type for n in nodes) != ["Mul", "Sigmoid"] or consts:
            ops = ", ".join(sorted(n.op_type for n in nodes)) or "no nodes"
            raise g.fail(f"the gated MLP's activation in layer {i} is not SiLU ({ops}); accepted: {g.accepted}")
    return "silu"


def _scalars(g: Graph, nodes: list[Any], op: str, slot: int | None = None) -> list[float]:
    """The scalar float constants that the ``op`` nodes among ``nodes`` take (at input ``slot``, or any)."""
    out = []
    for n in nodes:
        if n.op_type != op:
            continue
        for k, x in enumerate(n.input):
            v = g.value(x)
            if (slot is None or k == slot) and v is not None and v.size == 1 and v.dtype.kind == "f":
                out.append(float(v.reshape(-1)[0]))
    return sorted(out)


def _rope_theta(g: Graph, stack: Stack, depth: int, patch: int, head_dim: int) -> float:
    """``rope_theta``, read back from the frequencies (1, 1, head_dim / 4) the graph multiplies the patch
    coordinates by, after checking that the rest of the RoPE is transformers' (see the module's docstring)."""
    scope = g.n + "rope_embeddings/"
    nodes = g.scope(scope)
    ops = {n.op_type for n in nodes}
    if not nodes or not {"Cos", "Sin", "Range"} <= ops:
        raise g.fail(f"no RoPE (Range, Cos, Sin) under {scope} in the DINOv3 graph; accepted: {g.accepted}")
    if ops & set(RANDOM):
        raise g.fail("the RoPE draws random numbers (a graph exported in training mode): export the model in eval()")
    vectors = [v for n in nodes if n.op_type == "Mul" for x in n.input if (v := g.value(x)) is not None and v.size > 1]
    if len(vectors) != 1 or vectors[0].dtype.kind != "f" or vectors[0].size != head_dim // 4 or head_dim % 4:
        raise g.fail(f"the RoPE's frequencies are not one constant of head_dim / 4 = {head_dim / 4:g} values")
    inv_freq = vectors[0].astype(np.float64).reshape(-1)  # 1 / theta ** (4k / head_dim), k < head_dim / 4
    if inv_freq.size < 2 or not 0 < inv_freq[1] < 1:
        raise g.fail(f"the RoPE's frequencies {inv_freq.tolist()} do not state a period rope_theta")
    theta = float(f"{inv_freq[1] ** (-head_dim / 4):.6g}")  # fp32 of 100 ** -0.5 -> 100.00000x -> 100
    want = (1 / theta ** np.arange(0, 1, 4 / head_dim, dtype=np.float32)).astype(np.float32)
    if not np.allclose(inv_freq, want, rtol=1e-5, atol=0):
        raise g.fail(f"the RoPE's frequencies are not 1 / theta ** (4k / head_dim) for one theta (~{theta:g})")
    checks = {
        "angle factors (2, 2 pi)": (_scalars(g, nodes, "Mul"), [2.0, 2 * math.pi]),
        "coordinate shift (1)": (_scalars(g, nodes, "Sub"), [1.0]),
        "patch-centre starts (0.5)": (_scalars(g, nodes, "Range", 0), [0.5, 0.5]),
        "patch-centre steps (1)": (_scalars(g, nodes, "Range", 2), [1.0, 1.0]),
    }
    for what, (got, expected) in checks.items():
        if len(got) != len(expected) or not all(
            math.isclose(a, b, rel_tol=1e-6) for a, b in zip(got, expected, strict=True)
        ):
            raise g.fail(f"the RoPE's {what} are {got}, not transformers' DINOv3 {expected}")
    divisors = sorted(
        int(v.reshape(-1)[0])
        for n in nodes
        if n.op_type == "Div" and (v := g.value(n.input[1])) is not None and v.size == 1 and v.dtype.kind in "iu"
    )
    if divisors != [patch, patch]:
        raise g.fail(f"the RoPE's grid divides the input by {divisors}, not by the patch size {patch}")
    used = {o for n in nodes for o in n.output} & {i for n in g.nodes if not n.name.startswith(scope) for i in n.input}
    for i in range(depth):  # every layer's attention rotates q and k by the graph's cos and sin
        if not any(set(n.input) & used for n in g.scope(stack.node(g, i, stack.attention))):
            raise g.fail(f"layer {i}'s attention does not use the RoPE computed under {scope}")
    return theta


def _model_config(tower: OnnxTower, path: Path) -> ModelConfig:
    """hf_dinov3's folder reader on the config the graph states, as if it were a ``config.json`` beside the file (so
    it reads the ``preprocessor_config.json`` there); its source says the file. The spec stays the timm DINOv3 name
    the reader gives: it is what builds the Eva (as for an ``hf:`` DINOv3 repo)."""
    _, where = og.preprocessor_beside(path, PROCESSOR)
    try:
        cfg = hf_dinov3.read_config(tower.config, path.parent)
    except CheckpointError as err:  # the reader names a config.json that is the graph's here
        raise CheckpointError(str(err).replace(str(path.parent / "config.json"), str(path), 1)) from None
    what = "a transformers DINOv3ViTModel (RoPE read from the graph's constants)"
    return dataclasses.replace(cfg, source=og.source(tower, what, where))


FAMILIES = (Family("DINOv3", _is_dinov3, _read, _model_config, hf_dinov3.LAYOUT),)
