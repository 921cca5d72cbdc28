"""vitreg's own files: a run directory (``model.json`` + ``model.safetensors``, what ``save_model``, ``vitreg train``
and the zoo write) and a weights file with a ``.json`` sidecar of the same fields (``NAME.safetensors`` +
``NAME.json``).

- recognised by: ``model.json`` in the folder; a ``.json`` file beside the weights file with the same stem;
- the architecture: every field of :class:`~vitreg.models.presets.ModelConfig`, checked against its type and range
  and built once on the meta device (:mod:`vitreg.models.load.sidecar`);
- onto timm: the keys are already timm's (the architecture may itself be a timm name, an Eva included), so timm's
  filter is all there is to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.models.load.formats.base import WEIGHT_SUFFIXES, Format, Layout
from vitreg.models.load.formats.timm_folder import LAYOUT as TIMM_LAYOUT

if TYPE_CHECKING:
    from vitreg.models.presets import ModelConfig

CONFIG_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"


def read_sidecar(path: Path) -> ModelConfig:
    # every value checked against its type and range, and the architecture built on the meta device, so a hostile
    # sidecar ("depth": "twelve") is a CheckpointError naming the file and key, never a traceback from timm
    from vitreg.models.load.sidecar import read_model_config

    return read_model_config(path)


def _read_config(_cfg: dict[str, Any], folder: Path) -> ModelConfig:
    return read_sidecar(folder / CONFIG_NAME)


def _claims_file(path: Path) -> bool:
    return path.suffix in WEIGHT_SUFFIXES and path.with_suffix(".json").is_file()


def _read_file(path: Path) -> tuple[ModelConfig, Layout]:
    return read_sidecar(path.with_suffix(".json")), TIMM_LAYOUT


FORMAT = Format(
    key="vitreg",
    preprocessing="its `model.json` (vitreg's squash for the models vitreg trains)",
    owner="vitreg",
    what="a vitreg run directory (`model.json` + `model.safetensors`), or a weights file with its `.json` sidecar",
    command="vitreg diagnose --model runs/train/reg4 --out runs/d",
    accepted="a vitreg run directory (model.json + model.safetensors) or a weights file with a .json sidecar",
    recognised_by="model.json in the folder; NAME.json beside NAME.safetensors",
    states_architecture="every field of vitreg's ModelConfig, checked and built on the meta device",
    order=0,
    config_file=CONFIG_NAME,
    parse_config=False,
    weight_files=(WEIGHTS_NAME,),
    claims_file=_claims_file,
    read_config=_read_config,
    read_file=_read_file,
    layout=TIMM_LAYOUT,
)
