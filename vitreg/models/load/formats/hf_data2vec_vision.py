"""A ``transformers`` data2vec-vision folder (``Data2VecVisionModel``, ``Data2VecVisionForImageClassification``:
facebook/data2vec-vision-*): BEiT's model (:mod:`.hf_beit`) under the prefix ``data2vec_vision.``, loaded into timm's
``Beit`` the same way, with the same config keys mapped and refused.

- recognised by: ``config.json`` with ``model_type`` ``data2vec-vision``; BEiT's keys;
- ``Data2VecVisionModel`` is saved without its pooler by default: the mean-pooled embedding's norm is then a unit
  norm (said in the model's source); the tokens do not depend on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.models.load.formats.base import HUB_WEIGHTS, Format
from vitreg.models.load.formats.hf_beit import LAYOUT, RESAMPLING, beit_config

if TYPE_CHECKING:
    from vitreg.models.presets import ModelConfig


def read_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    return beit_config(cfg, folder, "data2vec-vision", "Data2VecVisionModel")


FORMAT = Format(
    key="hf-data2vec-vision",
    preprocessing="its `preprocessor_config.json` (`BeitImageProcessor`: squashed, bicubic)",
    resampling=RESAMPLING,
    owner="transformers",
    what="a `transformers` data2vec-vision folder (`Data2VecVisionModel`, `Data2VecVisionForImageClassification`: "
    "facebook/data2vec-vision-*), read into timm's `Beit` as BEiT",
    command="vitreg diagnose --model hf:facebook/data2vec-vision-base-ft1k --download --out runs/d",
    accepted="a transformers Data2VecVisionModel folder",
    recognised_by="config.json model_type data2vec-vision; BEiT's keys (under data2vec_vision. in the task models)",
    states_architecture="config.json: as BEiT's",
    order=35,
    config_file="config.json",
    model_types=("data2vec-vision",),
    weight_files=HUB_WEIGHTS,
    read_config=read_config,
    layout=LAYOUT,
)
