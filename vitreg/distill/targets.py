"""The teacher's targets of a distillation, computed once per image (and view) and cached as fp16 shards.

Two teachers (``TEACHERS``):

- ``ttr``: the base model with one test-time register fed by its register neurons (:mod:`vitreg.models.ttr`), one
  pass per image. Its tokens at every target block are clean (the neurons write into the test-time register, not
  into patches), so they are targets for [CLS], the patches and the first new register (which takes the test-time
  register's place) at every block from the first register neuron's on;
- ``tta``: PH-Reg's denoised teacher (Chen, Yan et al. 2025): the frozen base on V views of the image (view 0 the
  image itself; the others shifted by whole patches, up to ``shift`` of the grid, and flipped left-right at random),
  each view's final patch features mapped back to the original grid and averaged where the view covers it: an
  artifact moves with the view, the content does not. Targets for the final normed patches only.

Both also keep the base's own final normed [CLS] (B, C): the student is held to it (the fix must keep what the model
says). Targets are written in shards of :data:`SHARD` images (``targets/part-NNNNN.safetensors``), each atomically
and named in ``targets/manifest.json`` with the digest of what made it, so an interrupted run reuses every finished
shard and a changed teacher recomputes them all. Under torchrun the shards are dealt round-robin to the ranks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vitreg import atomic
from vitreg import distributed as dist
from vitreg.device import autocast
from vitreg.distill.student import block_tokens

TEACHERS = ("ttr", "tta")
SHARD = 32  # images per cached shard
TARGET_DIR = "targets"
MANIFEST = "manifest.json"


@dataclass
class TeacherSpec:
    """What makes the targets (the digest of this, with the images', names the cache)."""

    kind: str  # ttr | tta
    blocks: list[int]  # target blocks (ttr); tta targets the final normed tokens only
    neurons: list[tuple[int, int]]  # ttr: the register neurons moved into the test-time register
    views: int = 1  # tta: views per image (view 0 the image itself)
    shift: float = 0.15  # tta: largest shift, as a share of the patch grid
    seed: int = 0  # tta: the views' offsets and flips
    dtype: str = "fp32"

    def digest(self, images: str) -> str:
        text = json.dumps([self.kind, self.blocks, self.neurons, self.views, self.shift, self.seed, self.dtype, images])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Targets:
    """Every image's targets, in memory: ``tokens`` (n, L, T, C) fp16 at the target blocks (ttr: the teacher's
    [CLS]?, own registers, test-time register and patches; tta: L = 1, the patches after the final norm) and the
    base's final normed [CLS] ``cls`` (n, C), or None for a model without [CLS]."""

    tokens: torch.Tensor
    cls: torch.Tensor | None
    seconds: float  # time spent computing them in this process (0 when every shard came from the cache)
    forwards: int  # teacher forwards computed in this process (images x views)


# ----------------------------------------------------------------------------------------------- tta geometry
def view_plan(n_views: int, grid: tuple[int, int], shift: float, seed: int, image: int) -> list[tuple[int, int, bool]]:
    """(dy, dx, flip) of each view of image ``image``: view 0 the image itself; the others random whole-patch
    offsets within ``shift`` of the grid, flipped left-right with probability 1/2 (a function of seed and image)."""
    rng = np.random.default_rng([seed, image])
    sy, sx = max(1, round(shift * grid[0])), max(1, round(shift * grid[1]))
    views = [(0, 0, False)]
    while len(views) < n_views:
        dy, dx = int(rng.integers(-sy, sy + 1)), int(rng.integers(-sx, sx + 1))
        flip = bool(rng.integers(0, 2))
        if (dy, dx, flip) != (0, 0, False):
            views.append((dy, dx, flip))
    return views


def make_view(x: torch.Tensor, dy: int, dx: int, flip: bool, patch: int) -> torch.Tensor:
    """Images (B, 3, H, W) shifted so that view[y, x] = image[y + dy * patch, x + dx * patch] (0 outside: the mean
    colour after normalisation), then flipped left-right."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    py, px = dy * patch, dx * patch
    ys, yd = slice(max(0, py), min(h, h + py)), slice(max(0, -py), min(h, h - py))
    xs, xd = slice(max(0, px), min(w, w + px)), slice(max(0, -px), min(w, w - px))
    out[..., yd, xd] = x[..., ys, xs]
    return out.flip(-1) if flip else out


def map_back(feats: torch.Tensor, dy: int, dx: int, flip: bool, total: torch.Tensor, count: torch.Tensor) -> None:
    """Add a view's patch features (B, Gh, Gw, C) into ``total`` (B, Gh, Gw, C) at the original grid positions they
    show, and 1 into ``count`` (Gh, Gw) there."""
    if flip:
        feats = feats.flip(2)
    gh, gw = feats.shape[1:3]
    # view patch (i, j) shows original patch (i + dy, j + dx)
    ys, yd = slice(max(0, -dy), min(gh, gh - dy)), slice(max(0, dy), min(gh, gh + dy))
    xs, xd = slice(max(0, -dx), min(gw, gw - dx)), slice(max(0, dx), min(gw, gw + dx))
    total[:, yd, xd] += feats[:, ys, xs]
    count[yd, xd] += 1


# ------------------------------------------------------------------------------------------------- computing
def _shard(
    teacher: nn.Module, base: nn.Module, x: torch.Tensor, spec: TeacherSpec, first: int, dtype: Any, device: Any
) -> dict[str, torch.Tensor]:
    """The targets of the images ``x`` (B, 3, H, W), whose first has index ``first`` in the training set."""
    vit: Any = base
    x = x.to(device)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad(), autocast(device, dtype):
        if spec.kind == "ttr":
            toks, _ = block_tokens(teacher, x, spec.blocks)
            out["tokens"] = torch.stack(toks, 1).half().cpu()  # (B, L, T, C)
            _, final = block_tokens(base, x, [])
        else:
            _, final = block_tokens(base, x, [])  # view 0 of every image: the image itself
            p = int(vit.patch_embed.patch_size[0])
            grid = (x.shape[-2] // p, x.shape[-1] // p)
            prefix = int(vit.num_prefix_tokens)
            b, c = x.shape[0], final.shape[-1]
            total = torch.zeros(b, *grid, c, device=device)  # (B, Gh, Gw, C): sums of the views' features
            for i in range(b):
                views = view_plan(spec.views, grid, spec.shift, spec.seed, first + i)
                count = torch.zeros(grid, device=device)
                map_back(final[i : i + 1, prefix:].float().reshape(1, *grid, c), 0, 0, False, total[i : i + 1], count)
                if len(views) > 1:  # the other views of this image in one batch
                    batch = torch.cat([make_view(x[i : i + 1], dy, dx, flip, p) for dy, dx, flip in views[1:]])
                    _, f = block_tokens(base, batch, [])
                    f = f[:, prefix:].float().reshape(len(views) - 1, *grid, c)
                    for v, (dy, dx, flip) in enumerate(views[1:]):
                        map_back(f[v : v + 1], dy, dx, flip, total[i : i + 1], count)
                total[i] /= count.clamp(min=1)[:, :, None]  # view 0 covers every patch: count >= 1
            out["tokens"] = total.reshape(b, 1, -1, c).half().cpu()  # (B, 1, P, C)
        if getattr(vit, "cls_token", None) is not None:
            out["cls"] = final[:, 0].half().cpu()  # (B, C): the base's final normed [CLS]
    return out


def compute_targets(
    teacher: nn.Module,
    base: nn.Module,
    images: torch.Tensor,
    spec: TeacherSpec,
    folder: Path,
    images_id: str,
    dtype: Any,
    device: Any,
    progress: bool = True,
) -> Targets:
    """Targets of ``images`` (n, 3, H, W), from ``folder``'s cache where its manifest matches, computed otherwise
    (the missing shards only); every rank returns all of them."""
    import time

    from tqdm import tqdm

    digest = spec.digest(images_id)
    manifest = folder / MANIFEST
    n = len(images)
    shards = list(range(0, n, SHARD))
    names = [f"part-{i // SHARD:05d}.safetensors" for i in shards]
    if dist.is_main():
        old = _read_manifest(manifest)
        if old.get("digest") != digest:  # another teacher or other images: nothing of the old cache fits
            for stale in folder.glob("part-*.safetensors"):
                stale.unlink()
            atomic.write_json(manifest, {"digest": digest, "images": n, "spec": spec.__dict__})
    dist.barrier()
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = [(s, name) for k, (s, name) in enumerate(zip(shards, names, strict=True)) if k % world == rank]
    todo = [(s, name) for s, name in mine if not (folder / name).is_file()]
    t0, forwards = time.perf_counter(), 0
    views = spec.views if spec.kind == "tta" else 1
    bar = tqdm(
        total=sum(min(SHARD, n - s) for s, _ in todo) * views,
        disable=not (progress and todo),
        desc=f"teacher targets ({spec.kind})",
        unit="fwd",
        dynamic_ncols=True,
    )
    for s, name in todo:
        part = _shard(teacher, base, images[s : s + SHARD], spec, s, dtype, device)
        atomic.write_safetensors(folder / name, part, metadata={"digest": digest})
        done = min(SHARD, n - s) * views
        forwards += done
        bar.update(done)
    bar.close()
    seconds = time.perf_counter() - t0
    dist.barrier()
    parts = [_read_shard(folder / name) for name in names]
    tokens = torch.cat([p["tokens"] for p in parts])
    cls = torch.cat([p["cls"] for p in parts]) if "cls" in parts[0] else None
    return Targets(tokens=tokens, cls=cls, seconds=seconds, forwards=forwards)


def _read_shard(path: Path) -> dict[str, torch.Tensor]:
    from vitreg.models.load.delta import read_tensors  # the header-checked safetensors reader

    return read_tensors(path)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def target_blocks(neurons: Sequence[tuple[int, int]], depth: int) -> list[int]:
    """The blocks the ttr teacher's tokens are targets at: from the first register neuron's block to the last."""
    first = min((int(layer) for layer, _ in neurons), default=depth - 1)
    return list(range(first, depth))
