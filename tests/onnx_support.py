"""What the ONNX tests share: exporting a transformers vision tower as users do (torch's TorchScript exporter, which
keeps module paths in node names), running a graph with onnxruntime (the reference), rewriting onnxruntime's dynamic
int8 graph into the fp32 graph of its dequantised weights (the reference for int8 files that no CPU moves), and the
rule every refused graph follows (one line, naming the file)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vitreg.errors import CheckpointError
from vitreg.models import load_model

# onnxruntime's integer ops -> the float op that replaces each, and the axis of its weight that a per-channel scale
# runs along (MatMul's B is (in, out): per output column; Conv's W is (out, in, kh, kw): per output channel)
INTEGER_OPS = {"MatMulInteger": ("MatMul", 1), "ConvInteger": ("Conv", 0)}

# onnxruntime's own run of an int8 graph is a loose check only: its result depends on the CPU. It quantises every
# activation to uint8 at run time (one scale per tensor) and multiplies u8 x s8 in the kernel the CPU offers. With VNNI
# (vpdpbusd) or AMX the int32 sums are exact; without VNNI (AVX2 alone, as on AMD before Zen 4) vpmaddubsw adds each
# pair of u8 x s8 products in int16 with saturation (255 * 127 * 2 = 64770 > 32767), so a sum where large activations
# meet large weights of one sign is clipped. Bounds first set on an AMX Xeon (cosine > 0.99, max |diff| < 0.25) failed
# on a 2-core AVX2 EPYC: cosine 0.972 (SigLIP), max |diff| 0.333 (DINOv3, tokens of norm 5.9). Measured on these towers:
# - a VNNI Xeon: cosine >= 0.9997, max |diff| <= 0.014 x the largest token norm;
# - the AVX2 kernel emulated (each adjacent pair along K summed and clipped to int16, as fp32 ops): on the tests' own
#   inputs it gives the EPYC's two numbers (0.972, 0.333); over 12 seeds of every tower and other inputs, cosine >= 0.95
#   and max |diff| <= 0.17 x the largest token norm.
# The bounds below hold for both with room (cosine 0.9: an angle of 26 degrees), so alone they catch only a reading that
# is wrong altogether; what a subtle misreading fails is INT8_RUN_MARGIN.
INT8_RUN_COSINE = 0.9  # per token
INT8_RUN_MAX_DIFF = 0.3  # x the largest token norm of the run
# vitreg's tokens are nearer to the int8 run than those of a misreading (``dequantised_graph(misread=True)``: square
# weights transposed) by this factor in relative error (Frobenius, all tokens): measured >= 11 on the VNNI Xeon, >= 3.4
# against the emulated AVX2 kernel, whose clipping costs as much as the misreading on some towers
INT8_RUN_MARGIN = 2.0


def export(model: torch.nn.Module, path: Path, size: int = 32, dynamic: dict[int, str] | None = None) -> None:
    """``model`` (taking ``pixel_values``) to ``path`` at opset 17, its batch axis dynamic unless ``dynamic`` (axis
    -> name) says which axes are."""
    axes = {"pixel_values": dynamic or {0: "batch"}}
    torch.onnx.export(model, (torch.randn(2, 3, size, size),), str(path), input_names=["pixel_values"], dynamo=False,
                      opset_version=17, dynamic_axes=axes)  # fmt: skip


def ort_outputs(path: Path, x: torch.Tensor, optimize: bool = True) -> list[Any]:
    """Every output of the graph at ``path`` run by onnxruntime on ``x`` (B, 3, H, W); ``optimize=False`` runs the
    nodes as written (no fusion into other kernels)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return list(sess.run(None, {"pixel_values": x.numpy()}))


def ort_hidden(path: Path, x: torch.Tensor, optimize: bool = True) -> torch.Tensor:
    """onnxruntime's last_hidden_state: the graph's first (B, N, C) output."""
    return torch.from_numpy(np.asarray(next(o for o in ort_outputs(path, x, optimize) if o.ndim == 3)))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over the whole tensor."""
    return float((a - b).norm() / b.norm())


def assert_near_int8_run(ours: torch.Tensor, run: torch.Tensor, misread: torch.Tensor) -> None:
    """vitreg's tokens ``ours`` (B, N, C) against onnxruntime's int8 run ``run`` of the same graph: within the loose
    bounds that hold on every CPU (INT8_RUN_COSINE, INT8_RUN_MAX_DIFF), and nearer to it by INT8_RUN_MARGIN than the
    tokens of a misreading of the file, ``misread``, are."""
    cos = float(torch.nn.functional.cosine_similarity(ours, run, dim=-1).min())
    assert cos >= INT8_RUN_COSINE, cos
    diff, norm = float((ours - run).abs().max()), float(run.norm(dim=-1).max())
    assert diff <= INT8_RUN_MAX_DIFF * norm, (diff, norm)
    mine, wrong = relative_error(ours, run), relative_error(misread, run)
    assert mine * INT8_RUN_MARGIN < wrong, (mine, wrong)


def dequantised_graph(src: Path, dst: Path, misread: bool = False) -> int:
    """``src``, an int8 graph of onnxruntime's ``quantize_dynamic``, written to ``dst`` with every integer product in
    fp32: each ``DynamicQuantizeLinear -> MatMulInteger/ConvInteger -> Cast -> Mul(activation scale * weight scale)``
    becomes ``MatMul/Conv(the fp32 activation, DequantizeLinear(the int8 weight))``. Returns how many were rewritten.

    onnxruntime's own run of ``src`` quantises every activation to uint8 at run time and multiplies in integer kernels
    that differ between CPUs (see INT8_RUN_COSINE); run with ``ort_hidden(dst, x, optimize=False)`` (no fusion back
    into integer kernels), the rewritten graph is plain fp32 arithmetic on the weights the file holds, the same on
    every CPU up to fp32 rounding. Its weight scale and zero point are the ones the graph multiplies by (found by
    following the nodes, not by the initialiser names vitreg reads), and onnxruntime's ``DequantizeLinear`` does the
    dequantisation. ``misread=True`` transposes every square MatMul weight after it (q, k, v and the attention output:
    the mistake of a reader that forgets that B is (in, out)), a wrong reading for the tests to tell apart."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    nodes = list(model.graph.node)
    made = {o: n for n in nodes for o in n.output}
    users: dict[str, list[Any]] = defaultdict(list)
    for n in nodes:
        for i in n.input:
            users[i].append(n)
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    inits = set(dims)
    transposed = 0
    assert len({n.name for n in nodes}) == len(nodes), f"{src}: node names are not unique"
    gone: set[str] = set()  # names of the nodes the rewrite replaces
    feeders: set[str] = set()  # the activation quantisers and scale products: dropped once nothing reads them
    at: dict[str, list[Any]] = {}  # the rescale Mul's name -> the float nodes written in its place
    for n in nodes:
        if n.op_type not in INTEGER_OPS:
            continue
        quant, (cast,) = made[n.input[0]], users[n.output[0]]
        (rescale,) = users[cast.output[0]]
        scales = made[next(i for i in rescale.input if i != cast.output[0])]
        kinds = (quant.op_type, cast.op_type, rescale.op_type, scales.op_type)
        assert kinds == ("DynamicQuantizeLinear", "Cast", "Mul", "Mul"), (n.name, kinds)
        assert n.input[2] == quant.output[2], n.name  # the activation's zero point
        assert quant.output[1] in scales.input, n.name  # activation scale x weight scale
        weight_scale = next(i for i in scales.input if i != quant.output[1])
        assert {n.input[1], weight_scale} <= inits, n.name
        op, axis = INTEGER_OPS[n.op_type]
        w = n.name + "_weight"  # one per node, should two nodes share a weight
        zero = [n.input[3]] if len(n.input) > 3 and n.input[3] else []
        dq = helper.make_node("DequantizeLinear", [n.input[1], weight_scale, *zero], [w], n.name + "_dq", axis=axis)
        fp32 = helper.make_node(op, [quant.input[0], w], [rescale.output[0]], n.name + "_fp32")
        fp32.attribute.extend(n.attribute)  # ConvInteger's kernel_shape, strides, pads: Conv's own
        at[rescale.name] = [dq, fp32]
        if misread and op == "MatMul" and len(set(dims[n.input[1]])) == 1:
            dq.output[0] = w + "_as_stored"
            at[rescale.name].insert(1, helper.make_node("Transpose", [dq.output[0]], [w], n.name + "_misread"))
            transposed += 1
        gone |= {n.name, cast.name, rescale.name}
        feeders |= {quant.name, scales.name}
    kept = [m for n in nodes for m in at.get(n.name, [] if n.name in gone else [n])]
    for _ in range(2):  # the scale products first, then the quantisers they read: nothing integer is left to run
        used = {i for n in kept for i in n.input} | {o.name for o in model.graph.output}
        kept = [n for n in kept if n.name not in feeders or set(n.output) & used]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    left = sorted({n.op_type for n in kept} & {*INTEGER_OPS, "DynamicQuantizeLinear"})
    assert not left, f"{src}: integer ops left after the rewrite: {left}"
    assert transposed or not misread, f"{src}: no square weight to misread"
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return len(at)


def refused(path: Path) -> str:
    """The message with which vitreg refuses the file at ``path``: one line naming it."""
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "\n" not in msg
    return msg
