"""The CPU training fast path (vitreg.train.fastpath): the same function and gradients as the model's own forward,
the same drop-path draws, a fallback for what it does not cover, and bitwise resume under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vitreg.models.presets import create_model
from vitreg.train import run_training
from vitreg.train.fastpath import FusedViT, block_eligible, model_eligible, training_module

CPU = torch.device("cpu")


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("vit_pico_patch4_32", num_classes=5, **kw)
    with torch.no_grad():  # LayerScale far from its 1e-4 init, so a wrong fold would show
        for block in model.blocks:
            for ls in (block.ls1, block.ls2):
                if hasattr(ls, "gamma"):
                    ls.gamma.uniform_(0.5, 1.5)
    return model


def _run(net: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, ...]:
    """Output and every parameter gradient of one forward/backward, drop path drawn from seed 1."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = net(x)
    out.float().square().sum().backward()
    return out.float().detach(), *(p.grad for p in model.parameters())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


VARIANTS = [
    dict(registers=4, init_values=1e-4),
    dict(registers=0, init_values=0.0),  # no LayerScale: nothing to fold
    dict(registers=2, init_values=1e-4, drop_path_rate=0.3),  # the same drop-path masks
    dict(registers=4, init_values=1e-4, class_token=False, global_pool="avg"),
]


@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("sdpa", [False, True])
def test_fast_path_equals_model_forward_in_fp32(kw, sdpa, one_thread):
    model = _model(**kw)
    for block in model.blocks:
        block.attn.fused_attn = sdpa
    net = training_module(model, CPU)
    assert isinstance(net, FusedViT)
    x = torch.randn(4, 3, 32, 32)
    for got, want in zip(_run(net, model, x, False), _run(model, model, x, False), strict=True):
        assert _rel(got, want) < 1e-5  # rounding only: the same function, regrouped


def test_fast_path_bf16_is_as_close_to_fp32_as_autocast_is(one_thread):
    model = _model(registers=4, init_values=1e-4)
    net, x = training_module(model, CPU), torch.randn(8, 3, 32, 32)
    ref = _run(model, model, x, False)
    own, fast = _run(model, model, x, True), _run(net, model, x, True)
    for r, o, f in zip(ref, own, fast, strict=True):
        assert _rel(f, r) < max(2 * _rel(o, r), 1e-3)


def test_hooked_block_runs_its_own_forward(one_thread):
    model = _model(registers=4, init_values=1e-4)
    net = training_module(model, CPU)
    seen = []
    handle = model.blocks[1].register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    try:
        assert not block_eligible(model.blocks[1])
        assert block_eligible(model.blocks[0])
        net(torch.randn(2, 3, 32, 32))
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 1 + 4 + 64, 64])]  # [CLS], 4 registers, 64 patches; width 64


def test_not_used_where_it_does_not_apply():
    model = _model(registers=0, init_values=1e-4)
    assert training_module(model, torch.device("cuda")) is model  # GPUs: not the cost it addresses
    model.set_grad_checkpointing(True)
    assert not model_eligible(model)
    assert training_module(model, CPU) is model
    other = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert training_module(other, CPU) is other


TINY = [
    "model=vit_pico_patch4_32", "registers=2", "progress=false", "batch_size=16", "data.train_size=64",
    "data.eval_size=32", "track_batch=8", "warmup_steps=2", "threads=1", "steps=4", "checkpoint_every=2",
    "log_every=1", "track_every=4", "eval_every=4", "drop_path=0.1",
]  # fmt: skip


class _Stop(Exception):
    pass


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_resume_is_bitwise_on_the_fast_path(tmp_path, monkeypatch, precision):
    """A run stopped after its step-2 checkpoint and resumed ends with the weights of an uninterrupted run."""
    from vitreg.train import loop

    args = [*TINY, f"precision={precision}"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    run_training(None, args, out=whole)
    real = loop._after_update

    def stop_after_two(s, done, bar):
        real(s, done, bar)
        if done == 2:
            raise _Stop

    monkeypatch.setattr(loop, "_after_update", stop_after_two)
    with pytest.raises(_Stop):
        run_training(None, args, out=part)
    monkeypatch.undo()
    run_training(None, resume_dir=part)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
