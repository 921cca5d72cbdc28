"""OpenCLIP image towers (``open_clip.transformer.VisionTransformer``, a CLIP's ``visual``) exported to ONNX with
OpenCLIP's module names, fp32 and onnxruntime's dynamic int8, built with OpenCLIP (tiny sizes, every tensor perturbed)
and read by vitreg's ``onnx-openclip`` format.

- fp32 graphs (QuickGELU and exact GELU, a dynamic or a fixed batch, a whole CLIP's ``encode_image``): vitreg's tokens
  equal OpenCLIP's forward (ln_post's input and output, the projected [CLS]) and onnxruntime running the graph
  (<= 1e-4); the architecture is the graph's (heads from q's head split, eps, activation, ``proj`` as the head);
- int8 graphs (every Linear, ``proj`` and ``conv1`` quantised per channel): vitreg's tokens equal the graph's own
  arithmetic on the weights it holds, in fp32 (the graph rewritten so, run by onnxruntime: <= 1e-4 on every CPU), and
  agree loosely with onnxruntime's int8 run, nearer to it than a misreading of the weights is;
- the preprocessing comes from an ``open_clip_config.json`` or a ``preprocessor_config.json`` beside the file, else is
  OpenAI's; a transformers CLIP graph is still the ``onnx`` format's; the tower variants vitreg does not read from a
  graph, and a graph without module paths, are one line naming the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from onnx_support import assert_near_int8_run, dequantised_graph, export, ort_outputs, refused

from vitreg.models import Inspector, load_model
from vitreg.models.load.formats import file_format

TOL = 1e-4
open_clip = pytest.importorskip("open_clip", reason="the open_clip_torch test extra is not installed")
onnx = pytest.importorskip("onnx", reason="onnx is not installed")
pytest.importorskip("onnxruntime", reason="the onnxruntime test extra is not installed")  # the reference runtime
SIZE, WIDTH, HEADS, OUT_DIM = 32, 64, 4, 16
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)


def _clip(quick_gelu: bool, size: int = SIZE, **vision: Any) -> torch.nn.Module:
    """A tiny OpenCLIP CLIP (its image tower: width 64, 4 heads of 16, MLP 96), every tensor perturbed."""
    cfg = dict(image_size=size, layers=2, width=WIDTH, head_width=WIDTH // HEADS, patch_size=8, mlp_ratio=1.5)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    model = open_clip.CLIP(embed_dim=OUT_DIM, vision_cfg={**cfg, **vision}, text_cfg=text, quick_gelu=quick_gelu)
    with torch.no_grad():  # OpenCLIP initialises norms to 1 and biases to 0: make each tell
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _reference(visual: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCLIP's forward: ln_post's input and output (B, 1 + N, C) and the projected [CLS] (B, D)."""
    seen: dict[str, torch.Tensor] = {}
    hook = visual.ln_post.register_forward_hook(lambda _m, args, out: seen.update(pre=args[0], normed=out))
    try:
        with torch.no_grad():
            out = visual(x)
    finally:
        hook.remove()
    pooled = out[0] if isinstance(out, tuple) else out
    return seen["pre"], seen["normed"], pooled


def _ours(path: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """vitreg's last block's output and tokens after the final norm (B, 1 + N, C), its output (B, D), its model."""
    model = load_model(path).eval()
    depth = len(model.blocks)
    cap = Inspector(model).run(x, layers=[depth - 1], attention_layers=None)
    assert cap.normed is not None
    assert cap.output is not None
    return cap.tokens[depth - 1], cap.normed, cap.output, model


@pytest.fixture(scope="module", params=["quick_gelu", "gelu"])
def exported(request, tmp_path_factory):
    """(activation, OpenCLIP's image tower, the folder holding its fp32.onnx and int8.onnx, and the references for the
    int8 graph: dequantised.onnx, its integer products in fp32, and misread.onnx, the same with a reading mistake).
    The graphs also output the patch tokens after ln_post (``output_tokens``), so all of them can be compared."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp(f"onnx-openclip-{request.param}")
    visual = _clip(request.param == "quick_gelu").visual
    visual.output_tokens = True
    export(visual, d / "fp32.onnx")
    quantize_dynamic(d / "fp32.onnx", d / "int8.onnx", weight_type=QuantType.QInt8, per_channel=True)
    assert dequantised_graph(d / "int8.onnx", d / "dequantised.onnx") == 2 * 4 + 2  # every Linear, proj, conv1
    dequantised_graph(d / "int8.onnx", d / "misread.onnx", misread=True)
    return request.param, visual, d


def _graph(path: Path, x: torch.Tensor, optimize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """onnxruntime's outputs of an ``output_tokens`` graph: the projected [CLS] (B, D), the patch tokens (B, N, C)."""
    outs = ort_outputs(path, x, optimize)
    pooled = next(o for o in outs if o.ndim == 2)
    tokens = next(o for o in outs if o.ndim == 3)
    return torch.from_numpy(pooled), torch.from_numpy(tokens)


def test_fp32_graph_matches_openclip_and_onnxruntime(exported):
    act, visual, d = exported
    assert file_format(d / "fp32.onnx").key == "onnx-openclip"
    x = torch.randn(3, 3, SIZE, SIZE)
    pre, normed, pooled = _reference(visual, x)
    mine_pre, mine, output, ours = _ours(d / "fp32.onnx", x)
    cfg = ours.vitreg_config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size) == (64, 2, HEADS, 8, (SIZE, SIZE))
    assert (cfg.act, cfg.norm_eps, cfg.mlp_ratio, cfg.num_classes) == (act, 1e-5, 1.5, OUT_DIM)
    assert cfg.mean == pytest.approx(OPENAI_MEAN)
    assert "fp32" in cfg.source
    assert "OpenAI" in cfg.source
    assert cfg.resampling == "openclip"
    assert float((mine_pre - pre).abs().max()) <= TOL
    assert float((mine - normed).abs().max()) <= TOL
    assert float((output - pooled).abs().max()) <= TOL
    run_pooled, run_tokens = _graph(d / "fp32.onnx", x)
    assert float((mine[:, 1:] - run_tokens).abs().max()) <= TOL
    assert float((output - run_pooled).abs().max()) <= TOL


def test_int8_graph_equals_its_weights_in_fp32(exported):
    """The reference is the int8 graph with every integer product rewritten as fp32 arithmetic on the weights it
    holds, run by onnxruntime: no CPU-dependent kernel, so fp32's tolerance."""
    from vitreg.models.load.formats.onnx_openclip import read_onnx

    _, visual, d = exported
    tower = read_onnx(d / "int8.onnx")
    block = "visual.transformer.resblocks.0."
    want = {f"{block}attn.in_proj_weight", f"{block}attn.out_proj.weight", f"{block}mlp.c_fc.weight", "visual.proj"}
    assert want <= set(tower.quantized), tower.quantized
    x = torch.randn(2, 3, SIZE, SIZE)
    _, tokens, output, ours = _ours(d / "int8.onnx", x)
    assert "int8 (10 tensors dequantised)" in ours.vitreg_config.source
    ref_pooled, ref_tokens = _graph(d / "dequantised.onnx", x, optimize=False)
    assert float((tokens[:, 1:] - ref_tokens).abs().max()) <= TOL
    assert float((output - ref_pooled).abs().max()) <= TOL
    # the tolerance sees the int8 rounding itself: the fp32 tower the file was quantised from is far outside it
    unrounded = _reference(visual, x)[1][:, 1:]
    assert float((unrounded - ref_tokens).abs().max()) > 20 * TOL


def test_int8_graph_agrees_loosely_with_onnxruntimes_int8_run(exported):
    """onnxruntime's own run quantises the activations too, in kernels that differ between CPUs: loose bounds that
    hold on AVX2 and AMX alike, and nearer to it than a misreading (tests/onnx_support.py, INT8_RUN_COSINE)."""
    _, _, d = exported
    x = torch.randn(2, 3, SIZE, SIZE)
    tokens = _ours(d / "int8.onnx", x)[1][:, 1:]
    misread = _graph(d / "misread.onnx", x, optimize=False)[1]
    assert_near_int8_run(tokens, _graph(d / "int8.onnx", x)[1], misread)


def test_the_preprocessing_beside_the_file_is_read(tmp_path, exported):
    _, _, d = exported
    shutil.copy(d / "fp32.onnx", tmp_path / "visual.onnx")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1] * 3, "image_std": [0.2] * 3}))
    cfg = load_model(tmp_path / "visual.onnx").vitreg_config
    assert (cfg.mean, cfg.std) == ((0.1,) * 3, (0.2,) * 3)
    assert "preprocessor_config.json" in cfg.source
    # OpenCLIP's own config beside it comes first: its preprocess_cfg, as an OpenCLIP folder states it
    pre = {"mean": [0.5] * 3, "std": [0.25] * 3}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}, "preprocess_cfg": pre}))
    cfg = load_model(tmp_path / "visual.onnx").vitreg_config
    assert (cfg.mean, cfg.std) == ((0.5,) * 3, (0.25,) * 3)
    assert "open_clip_config.json" in cfg.source


def test_a_fixed_batch_and_a_whole_clips_encode_image_read_alike(tmp_path):
    """A graph exported without a dynamic batch (its head split a constant shape) and one of a whole CLIP's
    ``encode_image`` (its names under ``visual.``, its nodes under ``/model/visual/``) give OpenCLIP's tokens."""

    class EncodeImage(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(x)

    torch.manual_seed(1)
    model = _clip(quick_gelu=True)
    x = torch.randn(2, 3, SIZE, SIZE)  # the batch the fixed graph was exported with
    torch.onnx.export(model.visual, (x,), str(tmp_path / "fixed.onnx"), input_names=["image"], dynamo=False,
                      opset_version=17)  # fmt: skip
    export(EncodeImage(model), tmp_path / "clip.onnx")
    pre, normed, pooled = _reference(model.visual, x)
    for name in ("fixed.onnx", "clip.onnx"):
        mine_pre, mine, output, ours = _ours(tmp_path / name, x)
        assert ours.vitreg_config.num_heads == HEADS, name
        assert float((mine_pre - pre).abs().max()) <= TOL, name
        assert float((mine - normed).abs().max()) <= TOL, name
        assert float((output - pooled).abs().max()) <= TOL, name


def test_a_transformers_clip_graph_is_still_the_onnx_formats(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           image_size=SIZE, patch_size=8)  # fmt: skip
    export(CLIPVisionModel(cfg).eval(), tmp_path / "hf.onnx")
    assert file_format(tmp_path / "hf.onnx").key == "onnx"


@pytest.mark.parametrize(
    ("vision", "says"),
    [
        (dict(ls_init_value=0.1), "ls_1, ls_2 (LayerScale)"),
        (dict(pool_type="avg"), "not of the [CLS] token"),
        (dict(final_ln_after_pool=True), "ln_post does not follow the last block"),
        (dict(attentional_pool=True, attn_pooler_heads=2, attn_pooler_queries=4), "attentional pooling"),
        (dict(no_ln_pre=True), "without ln_pre"),
    ],
)
def test_tower_variants_vitreg_does_not_read_are_refused(tmp_path, vision, says):
    export(_clip(quick_gelu=False, **vision).visual, tmp_path / "variant.onnx")
    assert says in refused(tmp_path / "variant.onnx")


def test_a_graph_without_module_paths_is_refused_as_such(tmp_path):
    """A graph whose node names were dropped (as torch's dynamo exporter writes them): claimed by OpenCLIP's tensor
    names, refused for what it does not say."""
    export(_clip(quick_gelu=False).visual, tmp_path / "visual.onnx")
    g = onnx.load(str(tmp_path / "visual.onnx"))
    for i, n in enumerate(g.graph.node):
        n.name = f"node_{i}"
    onnx.save(g, str(tmp_path / "anon.onnx"))
    assert file_format(tmp_path / "anon.onnx").key == "onnx-openclip"
    assert "dynamo" in refused(tmp_path / "anon.onnx")
