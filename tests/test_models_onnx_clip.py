"""transformers CLIP vision towers, as folders and as ONNX exports (fp32 and onnxruntime's dynamic int8), built with
the libraries that own them (random init, tiny sizes) and read by vitreg.

- folders: vitreg's pre-norm tokens equal transformers' ``last_hidden_state`` and its final-norm [CLS] equals
  ``pooler_output`` (<= 1e-4);
- fp32 graphs: vitreg's tokens equal onnxruntime running the same graph (<= 1e-4);
- int8 graphs: every weight vitreg dequantises is within half a quantisation step of the fp32 weight it came from and
  equals the test's own dequantisation of the initialisers; vitreg's tokens equal transformers' model holding those
  weights and the graph's own arithmetic on them in fp32 (the graph rewritten so, run by onnxruntime: <= 1e-4 on
  every CPU); onnxruntime's int8 run (which also quantises activations, in CPU-dependent kernels) agrees loosely,
  nearer to vitreg's tokens than to a misreading's;
- the architecture comes from the graph (heads, eps, activation, image size), and what it does not state is refused.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from onnx_support import assert_near_int8_run, dequantised_graph, export, ort_hidden, refused

from vitreg.models import Inspector, load_model

TOL = 1e-4
transformers = pytest.importorskip("transformers", reason="the transformers test extra is not installed")
onnx = pytest.importorskip("onnx", reason="onnx is not installed")
pytest.importorskip("onnxruntime", reason="the onnxruntime test extra is not installed")  # the reference runtime
SIZE = 32
INT8_GRAPHS = ("int8.onnx", "int8-all.onnx", "uint8-tensor.onnx")


def _clip_vision(
    kind: str = "CLIPVisionModelWithProjection", act: str = "quick_gelu", heads: int = 4, eps: float = 1e-5
) -> torch.nn.Module:
    from transformers import CLIPVisionConfig

    cfg = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=heads,
        image_size=SIZE,
        patch_size=8,
        hidden_act=act,
        layer_norm_eps=eps,
        projection_dim=16,
    )
    model = getattr(transformers, kind)(cfg).eval()
    with torch.no_grad():  # transformers initialises biases to 0 and norms to 1: make every weight tell
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _tokens(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vitreg's last-block tokens before the final norm (B, 1 + N, C) and its final-norm [CLS] (B, C)."""
    cap = Inspector(model.eval()).run(x, layers=[len(model.blocks) - 1], attention_layers=None)
    last = cap.split_tokens(len(model.blocks) - 1)
    return torch.cat([last.cls[:, None], last.patches.flatten(1, 2)], 1), cap.normed[:, 0]


def _hidden(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model.vision_model(pixel_values=x) if hasattr(model, "vision_model") else model(pixel_values=x)
    return out.last_hidden_state, out.pooler_output


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny CLIPVisionModelWithProjection, its fp32 export and three int8 quantisations of it, each with its
    references: ``<name>.dequantised.onnx`` (its integer products in fp32) and ``<name>.misread.onnx`` (the same with
    a reading mistake)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("onnx")
    model = _clip_vision()
    export(model, d / "fp32.onnx")
    # as the released CLIP file: MatMuls only, per output channel; then onnxruntime's defaults (Conv and Gather too),
    # and per-tensor uint8
    quantize_dynamic(
        d / "fp32.onnx", d / "int8.onnx", per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"]
    )
    quantize_dynamic(d / "fp32.onnx", d / "int8-all.onnx", per_channel=True, weight_type=QuantType.QInt8)
    quantize_dynamic(d / "fp32.onnx", d / "uint8-tensor.onnx", per_channel=False, weight_type=QuantType.QUInt8)
    for name in INT8_GRAPHS:
        assert dequantised_graph(d / name, d / f"{name}.dequantised.onnx") >= 2 * 6 + 1  # and the projection
        dequantised_graph(d / name, d / f"{name}.misread.onnx", misread=True)
    return model, d


def test_fp32_graph_matches_onnxruntime_and_transformers(exported):
    model, d = exported
    ours = load_model(d / "fp32.onnx")
    cfg = ours.vitreg_config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size) == (64, 2, 4, 8, (SIZE, SIZE))
    assert (cfg.act, cfg.norm_eps, cfg.mlp_ratio) == ("quick_gelu", 1e-5, 1.5)
    assert "fp32" in cfg.source
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens, cls = _tokens(ours, x)
    assert float((tokens - ort_hidden(d / "fp32.onnx", x)).abs().max()) <= TOL
    hidden, pooled = _hidden(model, x)
    assert float((tokens - hidden).abs().max()) <= TOL
    assert float((cls - pooled).abs().max()) <= TOL


def _test_dequantised(path) -> dict[str, np.ndarray]:
    """The test's own reading of onnxruntime's quantised MatMul weights: (q - zero_point) * scale per column,
    keyed by the MatMulInteger node's module path (``/vision_model/encoder/layers.0/self_attn/q_proj``)."""
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    out = {}
    for n in g.node:
        if n.op_type != "MatMulInteger":
            continue
        base = n.input[1].removesuffix("_quantized")
        q, zp, scale = init[n.input[1]].astype(np.float64), init[base + "_zero_point"], init[base + "_scale"]
        out[n.name.rsplit("/", 1)[0]] = ((q - zp.astype(np.float64)) * scale).T  # (out, in)
    return out


@pytest.mark.parametrize("name", INT8_GRAPHS)
def test_int8_graph_is_dequantised_exactly(exported, name):
    from vitreg.models.load.formats.onnx_clip import read_onnx

    model, d = exported
    graph = read_onnx(d / name)
    assert graph.quantized, "the quantised graph should report its int8 tensors"
    theirs = dict(model.named_parameters())
    mine = _test_dequantised(d / name)
    assert len(mine) == 2 * 6 + 1  # six Linears per layer, and the projection (not part of the tower)
    for key, w in graph.state_dict.items():
        if key not in graph.quantized:
            assert torch.equal(w, theirs[key].detach()), key  # fp32 tensors are taken as they are
            continue
        # within half a quantisation step of the original weight: 256 levels over at most [-max|w|, max|w|]
        half_step = float(theirs[key].detach().abs().max()) / 127 / 2
        assert float((w - theirs[key].detach()).abs().max()) <= half_step * 1.001 + 1e-7, key
        node = "/" + key.removesuffix(".weight").replace(".", "/").replace("encoder/layers/", "encoder/layers.")
        if node in mine:
            np.testing.assert_allclose(w.numpy(), mine[node], rtol=0, atol=1e-6)
    # vitreg's model equals transformers' model holding the dequantised weights
    holder = _clip_vision()
    missing, unexpected = holder.load_state_dict(graph.state_dict, strict=False)
    assert not unexpected
    assert missing == ["visual_projection.weight"]
    ours = load_model(d / name)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens, cls = _tokens(ours, x)
    hidden, pooled = _hidden(holder, x)
    assert float((tokens - hidden).abs().max()) <= TOL
    assert float((cls - pooled).abs().max()) <= TOL
    # ... and the graph's own arithmetic on those weights in fp32 (onnxruntime, no CPU-dependent kernel), which the
    # fp32 model they were rounded from is far from (measured >= 190 x TOL)
    ref = ort_hidden(d / f"{name}.dequantised.onnx", x, optimize=False)
    assert float((tokens - ref).abs().max()) <= TOL
    assert float((_hidden(model, x)[0] - ref).abs().max()) > 20 * TOL
    # onnxruntime's own run also quantises the activations, in kernels that differ between CPUs: loosely
    misread = ort_hidden(d / f"{name}.misread.onnx", x, optimize=False)
    assert_near_int8_run(tokens, ort_hidden(d / name, x), misread)


@pytest.mark.parametrize(("act", "heads", "eps"), [("gelu", 2, 1e-6), ("quick_gelu", 8, 1e-5)])
def test_the_architecture_is_read_from_the_graph(tmp_path, act, heads, eps):
    model = _clip_vision("CLIPVisionModel", act=act, heads=heads, eps=eps)
    export(model, tmp_path / "m.onnx")
    ours = load_model(tmp_path / "m.onnx")
    cfg = ours.vitreg_config
    assert (cfg.act, cfg.num_heads, cfg.norm_eps) == (act, heads, eps)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens, _ = _tokens(ours, x)
    assert float((tokens - _hidden(model, x)[0]).abs().max()) <= TOL


def test_preprocessing_beside_the_file(tmp_path, exported):
    import json
    import shutil

    _, d = exported
    shutil.copy(d / "fp32.onnx", tmp_path / "model.onnx")
    assert load_model(tmp_path / "model.onnx").vitreg_config.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    cfg = load_model(tmp_path / "model.onnx").vitreg_config
    assert (cfg.mean, cfg.std) == ((0.5,) * 3, (0.25,) * 3)
    assert "preprocessor_config.json" in cfg.source


def test_other_graphs_are_refused_with_the_file_named(tmp_path, exported):
    from onnx import helper

    _, d = exported
    # not ONNX at all
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf" * 10)
    assert "not a readable ONNX file" in refused(tmp_path / "junk.onnx")
    # an ONNX graph of something else
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.randn(1, 4),), str(tmp_path / "lin.onnx"), dynamo=False)
    assert "not a vision tower" in refused(tmp_path / "lin.onnx")
    # the same CLIP with its node names gone (as torch's dynamo exporter writes them): the modules cannot be told apart
    g = onnx.load(str(d / "fp32.onnx"))
    for i, n in enumerate(g.graph.node):
        n.name = f"node_{i}"
    onnx.save(g, str(tmp_path / "anon.onnx"))
    assert "dynamo" in refused(tmp_path / "anon.onnx")
    # an attention scale other than 1/sqrt(head_dim) is not a transformers CLIP: refused, never guessed
    g = onnx.load(str(d / "fp32.onnx"))
    for n in g.graph.node:
        if n.op_type == "Constant" and "/layers.1/self_attn/Constant" in n.name:
            t = n.attribute[0].t
            if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 0:
                n.attribute[0].t.CopyFrom(helper.make_tensor(t.name, onnx.TensorProto.FLOAT, [], [0.3]))
    onnx.save(g, str(tmp_path / "scale.onnx"))
    assert "attention scale" in refused(tmp_path / "scale.onnx")


def test_cli_reads_an_onnx_file_and_names_a_bad_one(tmp_path, exported):
    _, d = exported
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitreg",
            "inspect",
            "--model",
            str(d / "int8.onnx"),
            "--images",
            "synthetic",
            "--limit",
            "4",
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    bad = subprocess.run(
        [sys.executable, "-m", "vitreg", "inspect", "--model", str(tmp_path / "bad.onnx")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert str(tmp_path / "bad.onnx") in lines[0]
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("kind", ["CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel"])
def test_transformers_clip_folders(tmp_path, kind):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    if kind == "CLIPModel":
        vision = _clip_vision("CLIPVisionModel").config.to_dict()
        text = CLIPTextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=64,
            max_position_embeddings=8,
        )
        model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision, projection_dim=16)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    else:
        model = _clip_vision(kind)
    model.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    assert ours.vitreg_config.source == f"transformers {kind}"
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens, cls = _tokens(ours, x)
    hidden, pooled = _hidden(model, x)
    assert float((tokens - hidden).abs().max()) <= TOL
    assert float((cls - pooled).abs().max()) <= TOL
