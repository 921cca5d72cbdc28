"""Distillation: a step of vitreg's student vs a plain PyTorch loop over the same frozen/unlocked split (target: at
least 0.95x its throughput), for the default set (``--unlock registers``: the register tokens alone) or ``--unlock
neurons`` (the registers and the register neurons' input rows).

The plain loop is what one writes by hand: the base model with the registers appended, ``requires_grad`` on the register
tokens (and with ``neurons`` on the whole ``fc1`` weight and bias of every block holding a neuron, the gradient of the
other rows zeroed before the step), block outputs caught by forward hooks, the same loss (normalised MSE + cosine at
every target block, and the final [CLS]'s cosine), AdamW. Both take the same batch and targets, in turn, in one process
(the machine is shared and noisy), each timed ``--reps`` times; the ratio of the median step times is printed. Random
weights: speed does not depend on them. ``precision`` as training resolves it (bf16 autocast only where the CPU has
native bf16; fp32 otherwise).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from vitreg.device import autocast, cpu_line, resolve_device, resolve_dtype, set_threads
from vitreg.distill.loop import Objective
from vitreg.distill.student import Student, block_tokens
from vitreg.distill.targets import Targets
from vitreg.models import create_model
from vitreg.models.registers import append_registers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_base_patch16_224", help="a vitreg preset (default: ViT-B/16)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--neurons", type=int, default=16, help="register neurons, spread over blocks 4-6")
    ap.add_argument("--registers", type=int, default=4)
    ap.add_argument("--unlock", choices=("registers", "neurons"), default="registers", help="the set trained")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="pico model, few repetitions (smoke run)")
    args = ap.parse_args()
    name, reps = ("vit_pico_patch4_32", 2) if args.quick else (args.model, args.reps)
    threads = set_threads()
    device = resolve_device("cpu")
    dtype = resolve_dtype(args.precision, device)
    torch.manual_seed(0)
    base = create_model(name).eval()
    depth, hidden = len(base.blocks), base.blocks[0].mlp.fc1.out_features
    layers = [min(depth - 1, 4 + i % 3) for i in range(args.neurons)]
    neurons = sorted({(layer, (7919 * i) % hidden) for i, layer in enumerate(layers)})
    blocks = list(range(min(layer for layer, _ in neurons), depth))
    x = torch.randn(args.batch, 3, *base.patch_embed.img_size)
    n_tok = 1 + 1 + base.patch_embed.num_patches  # the teacher's [CLS], its test-time register, the patches
    targets = Targets(
        tokens=torch.randn(args.batch, len(blocks), n_tok, base.embed_dim).half(),
        cls=torch.randn(args.batch, base.embed_dim).half(),
        seconds=0.0,
        forwards=0,
    )
    idx = torch.arange(args.batch)

    # vitreg's student and objective
    student = Student(base, args.registers, args.unlock, neurons, seed=0)
    objective = Objective(student, targets, "ttr", blocks)
    groups = [{"params": [p for k, p in student.trainable().items() if k == "model.reg_token"], "lr": 1e-2}]
    rest = [p for k, p in student.trainable().items() if k != "model.reg_token"]
    if rest:
        groups.append({"params": rest, "lr": 1e-3})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)

    def vitreg_step() -> None:
        with autocast(device, dtype):
            loss = objective(x, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        student.mask_gradients()
        opt.step()

    # the plain loop: the registers, and with `neurons` whole fc1 tensors trainable, the other rows' gradients zeroed
    plain = copy.deepcopy(base)
    for p in plain.parameters():
        p.requires_grad_(False)
    first = append_registers(plain, torch.randn(1, args.registers, base.embed_dim) / base.embed_dim**0.5)
    plain.reg_token.requires_grad_(True)
    rows: dict[int, torch.Tensor] = {}
    for layer, unit in neurons:
        rows.setdefault(layer, torch.zeros(hidden, dtype=torch.bool))[unit] = True
    fc1s = {layer: plain.blocks[layer].mlp.fc1 for layer in rows} if args.unlock == "neurons" else {}
    for fc1 in fc1s.values():
        fc1.requires_grad_(True)
    pgroups: list[dict] = [{"params": [plain.reg_token], "lr": 1e-2}]
    if fc1s:
        pgroups.append({"params": [p for f in fc1s.values() for p in f.parameters()], "lr": 1e-3})
    popt = torch.optim.AdamW(pgroups, weight_decay=0.0)
    scale = targets.tokens.float().pow(2).sum(-1).mean(dim=(0, 2))

    def plain_step() -> None:
        with autocast(device, dtype):
            toks, final = block_tokens(plain, x, blocks)
            loss = x.new_zeros(())
            for j, s in enumerate(toks):
                p = torch.cat([s[:, : first + 1], s[:, first + args.registers :]], 1).float()
                t = targets.tokens[:, j].float()
                loss = loss + (p - t).pow(2).sum(-1).mean() / scale[j] + (1 - F.cosine_similarity(p, t, -1)).mean()
            loss = loss / len(toks) + (1 - F.cosine_similarity(final[:, 0].float(), targets.cls.float(), -1)).mean()
        popt.zero_grad(set_to_none=True)
        loss.backward()
        for layer, fc1 in fc1s.items():  # only the neurons' rows train
            fc1.weight.grad[~rows[layer]] = 0
            fc1.bias.grad[~rows[layer]] = 0
        popt.step()

    runs = {"vitreg": vitreg_step, "plain": plain_step}
    for step in runs.values():
        step()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(reps):
        for key, step in runs.items():
            t = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{cpu_line()}; {threads} threads; {name}, batch {args.batch}, {args.registers} registers, "
        f"--unlock {args.unlock}, "
        f"{len(neurons)} neurons in blocks {sorted(rows)}, targets at blocks {blocks[0]}-{blocks[-1]}, "
        f"{str(dtype).replace('torch.', '') if dtype else 'fp32'}"
    )
    for k, v in med.items():
        print(f"  {k:>7}: {1000 * v:8.1f} ms/step  ({args.batch / v:.1f} images/s)")
    print(f"  throughput vitreg / plain loop: {med['plain'] / med['vitreg']:.3f}x (target >= 0.95)")


if __name__ == "__main__":
    main()
