"""vitreg's deltas: registers added to a released model and the weights unlocked to fit them (`vitreg fix --method
distill`), stored as what changed relative to the base (:mod:`vitreg.models.load.delta`), never as a full copy.

- recognised by: ``delta.json`` in the folder;
- the architecture: the resulting ModelConfig that ``delta.json`` records (checked like a model.json), so FLOPs and
  listings need no weights;
- onto timm: the base is resolved and loaded by its own format (its spec is in ``delta.json``, its weights file's
  sha256 checked), then the registers are appended and the changed weights added (:func:`~vitreg.models.load.delta.
  apply_delta`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.models.load.formats.base import Format

if TYPE_CHECKING:
    from vitreg.models.presets import ModelConfig

CONFIG_FILE = "delta.json"
WEIGHTS_FILE = "delta.safetensors"


def _read_config(_cfg: dict[str, Any], folder: Path) -> ModelConfig:
    from vitreg.models.load.delta import read_delta

    return read_delta(folder).model_config(folder / CONFIG_FILE)


FORMAT = Format(
    key="delta",
    preprocessing="its base model's",
    resampling="as its base's format",
    owner="vitreg",
    what="a vitreg delta (`delta.json` + `delta.safetensors`: registers distilled into a released model by "
    "`vitreg fix --method distill`, stored relative to its base, which is loaded by its own format)",
    command="vitreg diagnose --model runs/distill --out runs/d",
    accepted="a vitreg delta folder (delta.json + delta.safetensors)",
    recognised_by="delta.json in the folder",
    states_architecture="the resulting ModelConfig that delta.json records; the base's spec and sha256",
    order=1,
    config_file=CONFIG_FILE,
    parse_config=False,
    weight_files=(WEIGHTS_FILE,),
    read_config=_read_config,
)
