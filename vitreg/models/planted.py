"""A tiny model with a *constructed* artifact: a pico ViT (32 px, 8x8 patches, 4 blocks) with one register neuron
planted by hand, the stand-in for a released model where seconds matter (`vitreg reproduce --quick`, the tests).

One embedding channel is 0 everywhere except at one grid position (via the position embedding); hidden unit UNIT of
block LAYER fires only there and writes a large vector into the residual stream, so that patch carries a high-norm
token from block LAYER on, as the paper's artifacts do. Its random weights are seeded: the same model every time.
"""

from __future__ import annotations

from typing import Any

import torch

LAYER, UNIT, POS = 1, 7, (2, 5)


def planted_model(num_classes: int = 0, **options: Any) -> torch.nn.Module:
    """A 4-block pico ViT (8x8 patches) with a hand-made register neuron (LAYER, UNIT) firing at grid cell POS;
    ``options``: model options of the preset (e.g. ``class_token=False, global_pool="map"``)."""
    from vitreg.models.presets import create_model

    torch.manual_seed(0)
    m: Any = create_model("vit_pico_patch4_32", registers=0, depth=4, num_classes=num_classes, **options).eval()
    with torch.no_grad():
        gw = m.patch_embed.grid_size[1]
        m.patch_embed.proj.weight[0] = 0  # channel 0 carries no image content ...
        m.patch_embed.proj.bias[0] = 0
        m.pos_embed[0, :, 0] = 0
        m.pos_embed[0, POS[0] * gw + POS[1], 0] = 8.0  # ... and is on at one position only
        mlp = m.blocks[LAYER].mlp
        mlp.fc1.weight[UNIT] = 0
        mlp.fc1.weight[UNIT, 0] = 3.0  # the unit reads channel 0
        mlp.fc1.bias[UNIT] = -2.0  # and stays off elsewhere
        direction = torch.randn(m.embed_dim)
        mlp.fc2.weight[:, UNIT] = 20 * direction / direction.norm()  # and writes a large vector
    return m
