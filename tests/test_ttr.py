"""Test-time registers: the register-neuron finder, the shift, its token layout on VisionTransformer and Eva, save and
load, and `vitreg fix` / ``--test-time-registers`` end to end.

The model with artifacts is *constructed*: no model within reach here grew real ones, so a register neuron is planted
by hand in a random pico ViT. One embedding channel is 0 everywhere except at one grid position (via the position
embedding); hidden unit UNIT of block LAYER fires only there and writes a large vector into the residual stream, so
that patch carries a high-norm token from block LAYER on, as the paper's artifacts do.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer

from vitreg import add_test_time_registers, find_register_neurons
from vitreg.analysis.ttr_sweep import sweep_top_k
from vitreg.cli import main
from vitreg.errors import ConfigError
from vitreg.jobs.specs import ModelSpec
from vitreg.models import Inspector, create_model, load_model, save_model
from vitreg.models.planted import LAYER, POS, UNIT, planted_model
from vitreg.results.fix import read_neurons

# the model with a planted register neuron is the library's (vitreg.models.planted); its names are imported from here
# by other tests too
__all__ = ["LAYER", "POS", "UNIT", "planted_model"]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def planted() -> torch.nn.Module:
    return planted_model()


@pytest.fixture(scope="module")
def search(planted, images):
    return find_register_neurons(planted, images)


def _final(model: torch.nn.Module, x: torch.Tensor):
    cap = Inspector(model).run(x, layers=[len(model.blocks) - 1], attention_layers=None)
    return cap.split_tokens(len(model.blocks) - 1), cap.split_tokens("normed")


def test_finder_ranks_the_planted_neuron_first(search):
    assert not search.reason
    layer, index = search[0]  # unpacks as (layer, index)
    assert (layer, index) == (LAYER, UNIT)
    assert search.top_layer == LAYER  # the block where the outliers appear
    assert search[0].score > 20 * search[1].score
    assert search.outlier_share == pytest.approx(1 / 64)  # one patch of 64 in every image
    assert search.images_with_outliers == search.images == 48


def test_fixed_model_moves_the_high_norm_into_the_register(planted, search, images):
    before = [p.detach().clone() for p in planted.parameters()]
    fixed = add_test_time_registers(planted, search[:1], registers=1)
    # the original is untouched: same layout, same weights, same outputs
    assert planted.num_prefix_tokens == 1
    assert planted.reg_token is None
    assert all(torch.equal(a, b) for a, b in zip(before, planted.parameters(), strict=True))
    assert fixed.num_prefix_tokens == 2

    (orig_last, orig_normed), (fix_last, fix_normed) = _final(planted, images), _final(fixed, images)
    threshold = search.threshold
    assert orig_last.patches.norm(dim=-1)[:, POS[0], POS[1]].min() > threshold  # the artifact, before
    assert fix_last.patches.norm(dim=-1).max() < threshold  # no patch outlier left
    assert fix_last.registers.shape[1] == 1  # split_tokens counts the new token as a register
    assert fix_last.registers.norm(dim=-1).min() > threshold  # the high norm sits in the register

    # [CLS] barely moves, unlike when the neuron is simply switched off (the artifact's information is kept)
    ablated = copy.deepcopy(planted)
    unit = torch.tensor([UNIT])
    ablated.blocks[LAYER].mlp.fc2.register_forward_pre_hook(lambda _m, a: (a[0].index_fill(-1, unit, 0),))
    _, abl_normed = _final(ablated, images)
    moved = F.cosine_similarity(fix_normed.cls, orig_normed.cls).mean()
    switched_off = F.cosine_similarity(abl_normed.cls, orig_normed.cls).mean()
    assert moved > 0.97
    assert moved > switched_off + 0.1


def test_the_sweep_picks_the_smallest_k_that_clears(planted, search, images):
    sweep = sweep_top_k(planted, search, images, max_k=8)
    assert [p.k for p in sweep.points] == [0, 1, 2, 4, 8]
    assert sweep.before.outlier_share == pytest.approx(1 / 64)
    assert sweep.at(0).outlier_share == pytest.approx(1 / 64)  # the extra token alone moves nothing
    assert sweep.chosen == 1
    assert sweep.cleared
    assert sweep.at(1).outlier_share == 0
    fixed_k = sweep_top_k(planted, search, images, top_k=3)
    assert fixed_k.chosen == 3
    assert [p.k for p in fixed_k.points] == [0, 1, 2, 3]


def test_a_random_model_has_nothing_to_move(images):
    torch.manual_seed(0)
    model = create_model("vit_pico_patch4_32", depth=4).eval()
    search = find_register_neurons(model, images)
    assert len(search) == 0
    assert search.reason.startswith("no outliers: nothing to move")
    # the paper's mean + 3 sigma always marks some tokens; they are not high-norm, so still nothing to move
    sigma = find_register_neurons(model, images, rule="sigma")
    assert sigma.threshold is not None
    assert len(sigma) == 0
    assert "median norm" in sigma.reason
    with pytest.raises(ConfigError, match="nothing to sweep"):
        sweep_top_k(model, search, images)


def test_save_and_load_round_trip(planted, search, images, tmp_path):
    fixed = add_test_time_registers(planted, search[:2], registers=2)
    save_model(fixed, tmp_path / "fixed")
    cfg = json.loads((tmp_path / "fixed" / "model.json").read_text())
    assert cfg["test_time_registers"] == 2
    assert cfg["register_neurons"] == [list(n) for n in search[:2]]
    loaded = load_model(tmp_path / "fixed").eval()
    assert loaded.num_prefix_tokens == 3
    with torch.inference_mode():
        assert torch.equal(loaded.forward_features(images[:4]), fixed.forward_features(images[:4]))
    with pytest.raises(ConfigError, match="already has test-time registers"):
        add_test_time_registers(loaded, search[:1])


def test_bad_neurons_are_refused_naming_them(planted):
    with pytest.raises(ConfigError, match=r"\(9, 0\): layer out of range for 4 blocks"):
        add_test_time_registers(planted, [(9, 0)])
    with pytest.raises(ConfigError, match="has 256 hidden units"):
        add_test_time_registers(planted, [(0, 999)])
    with pytest.raises(ConfigError, match="is \\(layer, index\\)"):
        add_test_time_registers(planted, ["x"])


def _with_zero_register(wide: torch.nn.Module, narrow: torch.nn.Module, first: int) -> None:
    """Copy ``narrow``'s weights into ``wide`` (one register more); the extra register, token ``first``, and its
    position-embedding row are 0."""
    sd, wsd = narrow.state_dict(), wide.state_dict()
    reg = torch.zeros_like(wsd["reg_token"])  # (1, R + 1, C)
    reg[:, : sd["reg_token"].shape[1]] = sd["reg_token"]
    sd["reg_token"] = reg
    if "pos_embed" in sd and sd["pos_embed"].shape != wsd["pos_embed"].shape:  # rows for the prefix tokens too
        pe = torch.zeros_like(wsd["pos_embed"])
        pe[:, :first], pe[:, first + 1 :] = sd["pos_embed"][:, :first], sd["pos_embed"][:, first:]
        sd["pos_embed"] = pe
    wide.load_state_dict(sd)


@pytest.mark.parametrize(
    "build",
    [
        # timm Eva (the DINOv3 blocks): RoPE on the patches only, storage tokens as registers
        lambda r: Eva(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_reg_tokens=r,
                      use_abs_pos_emb=False, use_rot_pos_emb=True, dynamic_img_size=True, num_classes=0),
        # the CLIP / original-timm layout: position embeddings on [CLS] and registers too
        lambda r: VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, reg_tokens=r,
                                    no_embed_class=False, num_classes=0, dynamic_img_size=True),
    ],
    ids=["eva-rope", "vit-prefix-pos-embed"],
)  # fmt: skip
def test_layout_equals_the_same_model_with_one_more_register(build, images):
    """With no neuron moved, a test-time register is exactly an extra zero register without position embedding: the
    model must equal timm's own model with one register more (RoPE offsets and prefix position rows included)."""
    torch.manual_seed(0)
    narrow = build(1).eval()
    fixed = add_test_time_registers(narrow, [], registers=1)
    wide = build(2).eval()
    _with_zero_register(wide, narrow, first=2)
    x = images[:4]
    with torch.inference_mode():
        assert torch.allclose(fixed.forward_features(x), wide.forward_features(x), atol=1e-5)
        assert not torch.allclose(narrow.forward_features(x)[:, 2:], wide.forward_features(x)[:, 3:], atol=1e-3)
    a = Inspector(fixed).run(x, layers=None, attention_layers=[1]).attention[1]
    b = Inspector(wide).run(x, layers=None, attention_layers=[1]).attention[1]
    assert a.shape == (4, 2, 3, 19)
    assert torch.allclose(a, b, atol=1e-5)


def test_the_shift_on_eva(images):
    """At a register neuron the test-time register gets the largest-magnitude activation (sign kept), patches get 0,
    [CLS] and the trained registers keep theirs; other units are untouched."""
    torch.manual_seed(0)
    model = Eva(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_reg_tokens=1,
                use_abs_pos_emb=False, use_rot_pos_emb=True, num_classes=0).eval()  # fmt: skip
    fixed = add_test_time_registers(model, [(1, 5), (1, 9)], registers=2)
    seen: dict[str, torch.Tensor] = {}
    fc2 = fixed.blocks[1].mlp.fc2
    fc2.register_forward_pre_hook(lambda _m, a: seen.__setitem__("in", a[0].clone()), prepend=True)
    fc2.register_forward_pre_hook(lambda _m, a: seen.__setitem__("out", a[0].clone()))
    with torch.inference_mode():
        fixed(images[:3])
    a, b = seen["in"], seen["out"]  # (B, 1 + 1 + 2 + 16, H)
    for unit in (5, 9):
        peak = a[:, :, unit].gather(1, a[:, :, unit].abs().argmax(1, keepdim=True))  # (B, 1)
        assert torch.equal(b[:, 2:4, unit], peak.expand(-1, 2))
        assert torch.equal(b[:, 4:, unit], torch.zeros_like(b[:, 4:, unit]))
        assert torch.equal(b[:, :2, unit], a[:, :2, unit])
    rest = [u for u in range(a.shape[-1]) if u not in (5, 9)]
    assert torch.equal(a[..., rest], b[..., rest])


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def fix_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fix")
    save_model(planted_model(num_classes=3), root / "planted")
    out = root / "run"
    argv = ["fix", "--model", str(root / "planted"), "--images", "synthetic", "--limit", "24", "--batch-size", "12",
            "--max-top-k", "4", "--examples", "2", "--threads", "1", "--save-model", "--held-out", "photos",
            "--held-out-subset", "0:6", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return root, out


def test_fix_writes_neurons_diagnosis_and_report(fix_run, capsys):
    _root, out = fix_run
    neurons = read_neurons(out / "neurons.json")
    assert neurons.top_k == 1
    assert list(neurons.selected[0]) == [LAYER, UNIT]
    fix = json.loads((out / "fix.json").read_text())
    assert fix["sweep"]["chosen"] == 1
    assert fix["sweep"]["cleared"]
    last = fix["layers"][-1]
    assert last["share_before"] == pytest.approx(1 / 64)
    assert last["share_after"] == 0
    metrics = json.loads((out / "metrics.json").read_text())
    a, b = metrics["models"]
    assert a["output"]["outlier_ratio"] == pytest.approx(1 / 64)
    assert b["output"]["outliers"] == 0
    assert b["registers"] == 1
    assert a["registers"] == 0
    page = (out / "report.html").read_text()
    assert "Test-time registers" in page
    assert "moved 1 register neuron" in page
    assert (out / "figures" / "fix_sweep.png").is_file()
    assert (out / "figures" / "fix_attention.png").is_file()
    assert load_model(out / "model").num_prefix_tokens == 2
    # measured on other images than the neurons were found on (bundled photos, not generated scenes)
    held = fix["held_out"]
    assert held["images"] == 6
    assert held["source"] == "photos"
    assert held["before"]["outlier_share"] == pytest.approx(1 / 64)  # the planted unit fires on any image
    assert held["after"]["outlier_share"] == 0
    assert held["after"]["cls_cosine"] > 0.9
    assert "Held out (6 images of photos" in page


def test_test_time_registers_flag_on_diagnose_and_lost(fix_run, tmp_path, capsys):
    root, out = fix_run
    neurons = str(out / "neurons.json")
    d = tmp_path / "d"
    argv = ["diagnose", "--model", str(root / "planted"), "--test-time-registers", neurons, "--limit", "8",
            "--examples", "0", "--no-report", "--threads", "1", "--out", str(d)]  # fmt: skip
    assert main(argv) == 0
    m = json.loads((d / "metrics.json").read_text())["models"][0]
    assert m["registers"] == 1
    assert m["output"]["outliers"] == 0
    assert "+test-time registers" in m["label"]
    lo = tmp_path / "lost"
    argv = ["lost", "--model", str(root / "planted"), "--test-time-registers", str(out), "--limit", "4",
            "--threads", "1", "--out", str(lo)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((lo / "lost.json").read_text())["registers"] == 1


def test_fix_on_a_model_without_artifacts_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["fix", "--model", "vit_pico_patch4_32", "--random-init", "--limit", "16", "--examples", "0",
            "--no-report", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "no outliers: nothing to move" in capsys.readouterr().out
    assert json.loads((out / "neurons.json").read_text())["search"]["neurons"] == []
    assert not (out / "arrays_b.npz").exists()
    # a neurons.json with nothing to move is refused by --test-time-registers, in one line
    argv = ["inspect", "--model", "vit_pico_patch4_32", "--random-init", "--test-time-registers", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no register neurons to move" in err
    assert str(out) in err
    assert "Traceback" not in err


def test_test_time_registers_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"neurons\.json not found"):
        ModelSpec(spec="vit_pico_patch4_32", random_init=True, test_time_registers=str(tmp_path)).check()
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "m", "spec": "m", "registers": 1, "top_k": "many", "search": {}}')
    with pytest.raises(ConfigError, match=r"bad\.json: top_k should be an integer"):
        read_neurons(bad)
