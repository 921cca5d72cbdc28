"""Does the resampling of the position table matter on a real model? OpenAI's CLIP ViT-B/16 (the zoo's
clip-vit-b16-openai, an ONNX export of transformers' CLIPVisionModel) diagnosed on coco-mini at another size than its
own 224 (default 448), twice in one run: with the table resampled the way its owner does it (transformers' bicubic,
no antialias: what vitreg does) and with timm's antialiased bicubic (what vitreg did before each format said its
owner's way). Printed side by side: the first block the auto rule splits, the block where the signature is strongest,
the outlier share and norm ratio at the last block, and the largest difference between the two resampled tables.
Not a timing: both runs are the same work.

``--quick``: a pico model with a transformers-style table (random weights), 8 generated scenes (a smoke run).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

import vitreg.models.load.formats.timm_folder as timm_folder
from vitreg.device import cpu_line
from vitreg.jobs.diagnose import DiagnoseConfig, ModelEntry, diagnose
from vitreg.jobs.specs import ImageSpec
from vitreg.models import load_model

CLIP = "zoo:clip-vit-b16-openai"
COCO_MINI = Path(__file__).resolve().parents[1].parent / "shared/data/coco-mini/annotations/instances_train2017.json"


def _timm_way() -> Any:
    """Patch vitreg's loading to leave the table to timm's filter (its antialiased bicubic); returns the undo."""
    saved = (timm_folder.resample_positions, timm_folder.resample_at_forward)
    timm_folder.resample_positions = lambda sd, model, how: sd  # type: ignore[assignment]
    timm_folder.resample_at_forward = lambda model, how: None  # type: ignore[assignment]

    def undo() -> None:
        timm_folder.resample_positions, timm_folder.resample_at_forward = saved

    return undo


def _run(spec: str, size: int, images: ImageSpec, out: Path) -> Any:
    entry = ModelEntry(key="a", spec=spec, img_size=size)
    cfg = DiagnoseConfig(models=[entry], images=images, examples=0, out=str(out))
    return diagnose(cfg).models[0]


def _quick_model(folder: Path) -> str:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act="quick_gelu")  # fmt: skip
    CLIPVisionModel(cfg).save_pretrained(folder)
    return str(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=448, help="the image size (CLIP's own is 224)")
    ap.add_argument("--limit", type=int, default=80, help="coco-mini photos (default: all 80)")
    ap.add_argument("--quick", action="store_true", help="pico model, 8 generated scenes (smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.quick:
            spec, size, images = _quick_model(root / "hf"), 48, ImageSpec(src="synthetic", limit=8, batch_size=8)
        else:
            spec, size = CLIP, args.size
            images = ImageSpec(src=str(COCO_MINI), limit=args.limit, batch_size=16)
        owner = _run(spec, size, images, root / "owner")
        table_owner = load_model(spec, img_size=size).pos_embed.detach()
        undo = _timm_way()
        try:
            timm = _run(spec, size, images, root / "timm")
            table_timm = load_model(spec, img_size=size).pos_embed.detach()
        finally:
            undo()
    print(f"{spec} at {size}x{size} on {owner.images} images; {cpu_line()}")
    print("| position table resampled | first outlier block | strongest block | outliers, last block | norm ratio |")
    print("|---|---|---|---|---|")
    for name, m in (("the owner's way (transformers: bicubic, no antialias)", owner), ("timm's (antialiased)", timm)):
        ratio = f"{m.output.norm_ratio:.2f}" if m.output.norm_ratio is not None else "-"
        first = m.first_outlier_layer if m.first_outlier_layer is not None else "none"
        print(f"| {name} | {first} | {m.strongest_layer} | {100 * m.output.outlier_ratio:.2f}% | {ratio} |")
    diff = (table_owner - table_timm).abs()
    print(f"largest difference between the two tables: {float(diff.max()):.3f} "
          f"(table entries up to {float(table_owner.abs().max()):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
