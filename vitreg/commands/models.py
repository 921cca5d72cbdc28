"""`vitreg models`: the presets with their sizes."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "The model presets with their sizes, and the other names --model takes."


def run(args: argparse.Namespace) -> int:
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
    return 0
