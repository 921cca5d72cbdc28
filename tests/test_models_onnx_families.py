"""transformers ViT, DeiT, DINOv2, DINOv3 and SigLIP vision towers as ONNX exports (fp32 and onnxruntime's dynamic
int8), built with transformers (random init, tiny sizes, every tensor perturbed) and read by vitreg's one ``.onnx``
format.

- fp32 graphs: vitreg's tokens after the final norm equal transformers' ``last_hidden_state`` (<= 1e-4; SigLIP's
  pooled output equals ``pooler_output``) and onnxruntime running the graph;
- int8 graphs (MatMul, Conv and Gather quantised per channel): vitreg's tokens equal the graph's own arithmetic on
  the weights it holds, in fp32 (the graph rewritten so, run by onnxruntime: <= 1e-4 on every CPU), and agree loosely
  with onnxruntime's int8 run (which quantises activations at run time, in CPU-dependent kernels), nearer to it than a
  misreading of the weights is;
- the architecture comes from the graph (heads, eps, activation, DeiT's distillation token, DINOv3's registers,
  gated MLP and RoPE period, the preprocessing default of each family), and a graph that does not state what vitreg
  needs is one line naming the file.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import numpy as np
import pytest
import torch
from onnx_support import assert_near_int8_run, dequantised_graph, export, ort_hidden, refused

from vitreg.models import Inspector, load_model, token_layout

TOL = 1e-4
transformers = pytest.importorskip("transformers", reason="the transformers test extra is not installed")
onnx = pytest.importorskip("onnx", reason="onnx is not installed")
pytest.importorskip("onnxruntime", reason="the onnxruntime test extra is not installed")  # the reference runtime
SIZE = 32
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE, patch_size=8)
FAMILIES = ("vit", "deit", "dinov2", "dinov3", "siglip")
IMAGENET = (0.485, 0.456, 0.406)
MEAN = {"vit": (0.5,) * 3, "deit": IMAGENET, "dinov2": IMAGENET, "dinov3": IMAGENET, "siglip": (0.5,) * 3}
PROCESSOR = {"vit": "ViTImageProcessor", "deit": "DeiTImageProcessor", "dinov2": "BitImageProcessor",
             "dinov3": "DINOv3ViTImageProcessorFast", "siglip": "SiglipImageProcessor"}  # fmt: skip
REGISTERS = {"dinov3": 4}


def _model(family: str, **extra: Any) -> torch.nn.Module:
    t = transformers
    if family == "vit":
        model = t.ViTModel(t.ViTConfig(**SIZES, intermediate_size=48, **extra), add_pooling_layer=False)
    elif family == "deit":
        model = t.DeiTModel(t.DeiTConfig(**SIZES, intermediate_size=48, **extra), add_pooling_layer=False)
    elif family == "dinov2":
        model = t.Dinov2Model(t.Dinov2Config(**SIZES, mlp_ratio=2, **extra))
    elif family == "dinov3":
        model = t.DINOv3ViTModel(t.DINOv3ViTConfig(**{**SIZES, "intermediate_size": 64, "num_register_tokens": 4,
                                                      **extra}))  # fmt: skip
    else:
        model = t.SiglipVisionModel(t.SiglipVisionConfig(**SIZES, intermediate_size=48, **extra))
    with torch.no_grad():  # transformers initialises biases to 0, norms and LayerScale to constants: make each tell
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, tmp_path_factory):
    """(family, the transformers model, the folder holding its fp32.onnx and int8.onnx, and the references for the
    int8 graph: dequantised.onnx, its integer products in fp32, and misread.onnx, the same with a reading mistake)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp(f"onnx-{request.param}")
    model = _model(request.param)
    export(model, d / "fp32.onnx")
    quantize_dynamic(d / "fp32.onnx", d / "int8.onnx", weight_type=QuantType.QInt8, per_channel=True)
    assert dequantised_graph(d / "int8.onnx", d / "dequantised.onnx") >= 2 * 6 + 1  # every Linear, the patch Conv
    dequantised_graph(d / "int8.onnx", d / "misread.onnx", misread=True)
    return request.param, model, d


def _ours(path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """vitreg's tokens after the final norm (B, prefix + N, C), its pooled output (SigLIP's head) and config."""
    model = load_model(path).eval()
    cap = Inspector(model).run(x, layers=[len(model.blocks) - 1], attention_layers=None)
    assert cap.normed is not None
    return cap.normed, cap.output, model


def test_fp32_graph_matches_transformers_and_onnxruntime(exported):
    family, model, d = exported
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(pixel_values=x)
        tokens, pooled, ours = _ours(d / "fp32.onnx", x)
    cfg = ours.vitreg_config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size) == (32, 2, 2, 8, (SIZE, SIZE))
    eps = {"vit": 1e-12, "deit": 1e-12, "dinov2": 1e-6, "dinov3": 1e-5, "siglip": 1e-6}[family]
    if family == "dinov3":  # a timm Eva: its eps and activation are the timm entry point's, the graph's are checked
        from vitreg.models.load.formats.onnx_clip import read_onnx

        stated = read_onnx(d / "fp32.onnx").config
        assert (stated["layer_norm_eps"], stated["hidden_act"], stated["use_gated_mlp"]) == (eps, "gelu", False)
    else:
        assert cfg.norm_eps == eps
        assert cfg.act == ("gelu_tanh" if family == "siglip" else "gelu")
    assert cfg.mean == pytest.approx(MEAN[family])
    assert "fp32" in cfg.source
    assert PROCESSOR[family] in cfg.source
    layout = token_layout(ours, (SIZE, SIZE))
    assert (layout.has_cls, layout.distilled) == (family != "siglip", family == "deit")
    assert layout.num_registers == REGISTERS.get(family, 0)
    assert float((tokens - out.last_hidden_state).abs().max()) <= TOL
    assert float((tokens - ort_hidden(d / "fp32.onnx", x)).abs().max()) <= TOL
    if family == "siglip":
        assert pooled is not None
        assert float((pooled - out.pooler_output).abs().max()) <= TOL


def test_int8_graph_equals_its_weights_in_fp32(exported):
    """The reference is the int8 graph with every integer product rewritten as fp32 arithmetic on the weights it
    holds, run by onnxruntime: no CPU-dependent kernel, so fp32's tolerance."""
    from vitreg.models.load.formats.onnx_clip import read_onnx

    _, model, d = exported
    tower = read_onnx(d / "int8.onnx")
    assert any(k.endswith("query.weight") or k.endswith("q_proj.weight") for k in tower.quantized), tower.quantized
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens, _, ours = _ours(d / "int8.onnx", x)
        unrounded = model(pixel_values=x).last_hidden_state
    assert "int8" in ours.vitreg_config.source
    ref = ort_hidden(d / "dequantised.onnx", x, optimize=False)
    assert float((tokens - ref).abs().max()) <= TOL
    # the tolerance sees the int8 rounding itself: the fp32 model the file was quantised from, each of its weights
    # within half a step of the file's, is far outside it (measured >= 240 x TOL)
    assert float((unrounded - ref).abs().max()) > 20 * TOL


def test_int8_graph_agrees_loosely_with_onnxruntimes_int8_run(exported):
    """onnxruntime's own run quantises the activations too, in kernels that differ between CPUs: loose bounds that
    hold on AVX2 and AMX alike, and nearer to it than a misreading (tests/onnx_support.py, INT8_RUN_COSINE)."""
    _, _, d = exported
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens = _ours(d / "int8.onnx", x)[0]
    misread = ort_hidden(d / "misread.onnx", x, optimize=False)
    assert_near_int8_run(tokens, ort_hidden(d / "int8.onnx", x), misread)


def test_the_preprocessing_beside_the_file_is_read(tmp_path, exported):
    _, _, d = exported
    shutil.copy(d / "fp32.onnx", tmp_path / "model.onnx")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1] * 3, "image_std": [0.2] * 3}))
    cfg = load_model(tmp_path / "model.onnx").vitreg_config
    assert (cfg.mean, cfg.std) == ((0.1,) * 3, (0.2,) * 3)
    assert "preprocessor_config.json" in cfg.source


@pytest.mark.parametrize("family", ["vit", "dinov2", "dinov3", "siglip"])
def test_a_head_count_the_graph_does_not_fix_isrefused(tmp_path, family):
    """The q Reshape's shape computed at run time (a Shape of the input) instead of constants: the number of heads
    is not stated, so the graph is refused, not guessed."""
    from onnx import helper

    export(_model(family), tmp_path / "m.onnx")
    g = onnx.load(str(tmp_path / "m.onnx"))
    made_by = {o: n.name for n in g.graph.node for o in n.output}
    reshapes = [n for n in g.graph.node if n.op_type == "Reshape" and "q_proj/" in made_by.get(n.input[0], "")]
    assert reshapes
    g.graph.node.insert(0, helper.make_node("Shape", ["pixel_values"], ["runtime_shape"], name="runtime_shape"))
    for n in reshapes:
        n.input[1] = "runtime_shape"
    onnx.save(g, str(tmp_path / "heads.onnx"))
    assert "head split is not fixed" in refused(tmp_path / "heads.onnx")


def test_other_graphs_are_refused_with_the_file_named(tmp_path):
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.randn(1, 4),), str(tmp_path / "lin.onnx"), dynamo=False)
    msg = refused(tmp_path / "lin.onnx")
    assert "not a vision tower" in msg
    assert "ViT" in msg
    assert "SigLIP" in msg
    # a ViT whose node names were dropped (as torch's dynamo exporter writes them)
    export(_model("vit"), tmp_path / "vit.onnx")
    g = onnx.load(str(tmp_path / "vit.onnx"))
    for i, n in enumerate(g.graph.node):
        n.name = f"node_{i}"
    onnx.save(g, str(tmp_path / "anon.onnx"))
    assert "dynamo" in refused(tmp_path / "anon.onnx")


def test_a_siglip2_graph_is_refused_as_such(tmp_path):
    """SigLIP 2 (NaFlex) embeds flattened patches with a Linear and resizes its positions per image: not read."""
    t = transformers
    cfg = t.Siglip2VisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                                patch_size=8, num_patches=16)  # fmt: skip
    model = t.Siglip2VisionModel(cfg).eval()
    inputs = (torch.randn(1, 16, 3 * 8 * 8), torch.ones(1, 16, dtype=torch.long), torch.tensor([[4, 4]]))
    torch.onnx.export(model, inputs, str(tmp_path / "s2.onnx"), dynamo=False, opset_version=17,
                      input_names=["pixel_values", "pixel_attention_mask", "spatial_shapes"])  # fmt: skip
    assert "SigLIP 2 (NaFlex)" in refused(tmp_path / "s2.onnx")


def test_dinov2_position_table_is_read_around_the_in_graph_resampling(tmp_path):
    """torch's exporter folds DINOv2's table into [CLS]'s row and the grid fed to a Resize: both are read, exactly."""
    from vitreg.models.load.formats.onnx_clip import read_onnx

    model = _model("dinov2")
    export(model, tmp_path / "m.onnx")
    g = onnx.load(str(tmp_path / "m.onnx")).graph
    assert "embeddings.position_embeddings" not in {t.name for t in g.initializer}
    assert any(n.op_type == "Resize" for n in g.node)
    tower = read_onnx(tmp_path / "m.onnx")
    assert tower.family == "DINOv2"
    got = tower.state_dict["embeddings.position_embeddings"]
    np.testing.assert_array_equal(got.numpy(), model.embeddings.position_embeddings.detach().numpy())


def test_dinov3_rope_period_and_gated_mlp_are_read_from_the_graph(tmp_path):
    """DINOv3's RoPE is computed in the graph: its period comes back from the frequency constant (1, 1, head_dim / 4),
    here 8 of them for one head of 32; the gated MLP (SiLU) from its gate_proj; the tokens equal transformers'."""
    from vitreg.models.load.formats.onnx_clip import read_onnx

    torch.manual_seed(1)
    model = _model("dinov3", num_attention_heads=1, rope_theta=37.0, use_gated_mlp=True, hidden_act="silu")
    export(model, tmp_path / "m.onnx")
    tower = read_onnx(tmp_path / "m.onnx")
    assert tower.family == "DINOv3"
    got = {k: tower.config[k] for k in ("rope_theta", "use_gated_mlp", "hidden_act", "num_register_tokens",
                                         "num_attention_heads", "key_bias", "query_bias")}  # fmt: skip
    assert got == dict(rope_theta=37.0, use_gated_mlp=True, hidden_act="silu", num_register_tokens=4,
                       num_attention_heads=1, key_bias=False, query_bias=True)  # fmt: skip
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens, pooled, _ = _ours(tmp_path / "m.onnx", x)
        out = model(pixel_values=x)
    assert float((tokens - out.last_hidden_state).abs().max()) <= TOL
    assert pooled is not None
    assert float((pooled - out.pooler_output).abs().max()) <= TOL


def test_dinov3_graphs_that_do_not_state_what_vitreg_needs_arerefused(tmp_path):
    """No static input size (DINOv3 has no position table to state one), RoPE frequencies of no single period, and a
    key bias (which timm's DINOv3 Eva cannot hold): each one line naming the file."""
    from onnx import numpy_helper

    model = _model("dinov3")
    export(model, tmp_path / "dynamic.onnx", dynamic={0: "batch", 2: "height", 3: "width"})
    assert "dynamic" in refused(tmp_path / "dynamic.onnx")
    export(model, tmp_path / "m.onnx")
    g = onnx.load(str(tmp_path / "m.onnx"))
    mul = next(n for n in g.graph.node if n.name == "/rope_embeddings/Mul_2")
    const = next(n for n in g.graph.node if n.op_type == "Constant" and n.output[0] in mul.input)
    freq = numpy_helper.to_array(const.attribute[0].t).copy()  # (1, 1, head_dim / 4)
    assert freq.size == 4
    freq[..., -1] *= 1.5
    const.attribute[0].t.CopyFrom(numpy_helper.from_array(freq))
    onnx.save(g, str(tmp_path / "freq.onnx"))
    assert "frequencies" in refused(tmp_path / "freq.onnx")
    export(_model("dinov3", key_bias=True), tmp_path / "kbias.onnx")
    assert "key_bias=True" in refused(tmp_path / "kbias.onnx")
