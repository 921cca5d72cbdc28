"""vitreg: find, measure and fix high-norm artifact tokens in Vision Transformers with register tokens.

The main calls are exported here and loaded on first use (importing ``vitreg`` does not import torch)::

    from vitreg import load_model, find_register_neurons, add_test_time_registers
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vitreg._lazy import lazy_exports
from vitreg._version import __version__

if TYPE_CHECKING:
    from vitreg.analysis.register_neurons import find_register_neurons
    from vitreg.models.inspect import Inspector
    from vitreg.models.load.checkpoints import load_model, save_model
    from vitreg.models.presets import create_model
    from vitreg.models.ttr import add_test_time_registers

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "vitreg.analysis.register_neurons": "find_register_neurons",
        "vitreg.models.ttr": "add_test_time_registers",
        "vitreg.models.load.checkpoints": "load_model save_model",
        "vitreg.models.presets": "create_model",
        "vitreg.models.inspect": "Inspector",
    },
)
