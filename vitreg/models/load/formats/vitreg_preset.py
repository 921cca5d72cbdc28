"""vitreg's presets by name (``vit_small_patch16_224``, ``vit_pico_patch4_32_reg4``, ...), random or with a weights
file (``--model NAME --weights FILE``).

- recognised by: the name, one of :data:`~vitreg.models.presets.PRESETS` (a ``_regN`` suffix adds registers);
- the architecture: the preset's sizes, with the registers, image size and options asked for;
- onto timm: a preset is a timm VisionTransformer: a weights file's layout is read from its keys (timm's own, or any
  other layout of the registry) when it is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vitreg.models.load.formats.base import Format

if TYPE_CHECKING:
    from vitreg.models.presets import ModelConfig


def _claims_name(spec: str) -> bool:
    from vitreg.models.presets import PRESETS, parse_spec

    return parse_spec(spec)[0] in PRESETS


def read_name(spec: str, *, registers: int | None, img_size: Any, overrides: dict[str, Any]) -> ModelConfig:
    from vitreg.models.presets import model_config

    return model_config(spec, registers=registers, img_size=img_size, **overrides)


FORMAT = Format(
    key="preset",
    preprocessing="vitreg's squash (`timm:` names: timm's eval transform of the name)",
    owner="vitreg",
    what="a weights file of a preset (with `--model` naming it)",
    command="vitreg probe --model vit_small_patch16_224 --registers 4 --weights w.safetensors",
    accepted="a preset name (vitreg models) with --weights or --random-init",
    recognised_by="a preset name of `vitreg models` (a _regN suffix adds registers)",
    states_architecture="the preset's sizes, with --registers, --img-size and the options asked for",
    order=10,
    claims_name=_claims_name,
    read_name=read_name,
    name_options=True,
)
