"""`vitreg fix` without recomputation: the work its passes share must give exactly the numbers of running each step
on its own. A pass resumed at a block from an earlier pass's block input, a pass stopped after a block, the search
with norms from another pass, the sweep with a given "before" point and shared block inputs, and the fix's diagnosis
of the original and the fixed model against a separate `vitreg diagnose --compare` of the two.

The model with artifacts is the planted pico ViT of test_ttr.py (a register neuron in block 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_ttr import planted_model
from timm.models.eva import Eva

from vitreg import add_test_time_registers, find_register_neurons
from vitreg.analysis.register_neurons import block_norms
from vitreg.analysis.ttr_sweep import SweepMeter, sweep_top_k
from vitreg.cli import main
from vitreg.models import Inspector, save_model
from vitreg.models.inspect import CaptureError, Resume
from vitreg.results.codec import to_json


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _eva() -> torch.nn.Module:
    torch.manual_seed(0)
    return Eva(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2, num_reg_tokens=1,
               use_abs_pos_emb=False, use_rot_pos_emb=True, num_classes=0).eval()  # fmt: skip


@pytest.mark.parametrize("build", [planted_model, _eva], ids=["vit", "eva-rope"])
def test_a_resumed_pass_equals_the_full_pass(build, images):
    """Test-time registers moving neurons of block 2 only: blocks 0-1 are those of the extra token alone, so a pass
    that starts at block 2 from the k = 0 model's block input gives the full pass's numbers exactly."""
    model = build()
    alone = add_test_time_registers(model, [], registers=1)
    fixed = add_test_time_registers(model, [(2, 3), (2, 11)], registers=1)
    x = images[:8]
    kw = dict(layers=[3], attention_layers=[3], norm_layers="all", normed=True)
    first = Inspector(alone).run(x, keep_inputs=[2], **kw)
    resume = Resume(block=2, tokens=first.inputs[2], norms={i: first.norms[i] for i in (0, 1)})
    resumed = Inspector(fixed).run(x, resume=resume, **kw)
    full = Inspector(fixed).run(x, **kw)
    assert torch.equal(resumed.tokens[3], full.tokens[3])
    assert torch.equal(resumed.normed, full.normed)
    assert torch.equal(resumed.output, full.output)
    assert torch.equal(resumed.attention[3], full.attention[3])
    for i in range(3):
        assert torch.equal(resumed.norms[i], full.norms[i]), i
    assert not torch.equal(full.tokens[3], first.tokens[3])  # the moved neurons did change block 2 on
    with pytest.raises(CaptureError, match="resumed at block 2"):
        Inspector(fixed).run(x, layers=[1], attention_layers=None, resume=resume)


def test_a_stopped_pass_equals_the_full_pass(images):
    model = planted_model()
    x = images[:8]
    stopped = Inspector(model).run(x, layers=None, norm_layers=[0, 1], attention_layers=None, normed=False,
                                   stop_after=1)  # fmt: skip
    full = Inspector(model).run(x, layers=[0, 1], attention_layers=None)
    assert stopped.output is None
    assert stopped.normed is None
    for i in (0, 1):
        assert torch.equal(stopped.split_norms(i).patches, full.split_tokens(i).patches.norm(dim=-1))
    with pytest.raises(CaptureError, match="stopped after block 1"):
        Inspector(model).run(x, layers=[2], attention_layers=None, normed=False, stop_after=1)


def test_search_and_sweep_with_shared_work_equal_their_own_passes(images):
    model = planted_model()
    search = find_register_neurons(model, images, batch_size=8, keep=8)
    # the norms of blocks 0..detect from another pass over the same batches (the fix's diagnosis of the original)
    detect = search.detect_layer
    before = SweepMeter.of(model, detect, 0)
    norms = []
    for x in images.split(8):
        cap = Inspector(model).run(x, layers=[detect], norm_layers="all", attention_layers=None)
        norms.append(block_norms(cap, detect + 1))
        before.add(cap, None)
    given = find_register_neurons(model, images, batch_size=8, keep=8, norms=np.concatenate(norms))
    assert to_json(given) == to_json(search)
    threshold = float(search.threshold)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = sweep_top_k(model, search, images, max_k=8, batch_size=8, cache_bytes=0)  # every pass from block 0
    shared = sweep_top_k(model, search, images, max_k=8, batch_size=8, before=before.point(threshold, None))
    assert to_json(shared) == to_json(plain)
    assert [p.k for p in plain.points] == [0, 1, 2, 4, 8]
    # the fixed models share the original's weights: it must come out untouched
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.num_prefix_tokens == 1
    assert not any(b.mlp.fc2._forward_pre_hooks for b in model.blocks)


def test_the_fix_diagnosis_equals_a_separate_diagnose(tmp_path: Path):
    """What `vitreg fix` writes as the diagnosis of the original (a) and the fixed model (b), from the passes it runs
    anyway, equals `vitreg diagnose --compare` of the two, file for file."""
    save_model(planted_model(), tmp_path / "planted")
    common = ["--images", "synthetic", "--limit", "24", "--batch-size", "12", "--threads", "1", "--precision", "fp32"]
    model = ["--model", str(tmp_path / "planted")]
    fix = tmp_path / "fix"
    argv = ["fix", *model, *common, "--max-top-k", "4", "--examples", "3", "--no-report", "--out", str(fix)]
    assert main(argv) == 0
    fixed = json.loads((fix / "fix.json").read_text())
    assert fixed["top_k"] >= 1
    assert fixed["detect_layer"] == 3
    separate = tmp_path / "separate"
    argv = ["diagnose", *model, "--compare", str(tmp_path / "planted"), "--test-time-registers2", str(fix)]
    assert main([*argv, *common, "--examples", "3", "--no-report", "--out", str(separate)]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (fix, separate))
    for ma, mb in zip(a["models"], b["models"], strict=True):
        assert ma == mb
    for key in ("a", "b"):
        za, zb = np.load(fix / f"arrays_{key}.npz"), np.load(separate / f"arrays_{key}.npz")
        assert sorted(za.files) == sorted(zb.files)
        for name in za.files:
            np.testing.assert_array_equal(za[name], zb[name], err_msg=f"{key}/{name}")
