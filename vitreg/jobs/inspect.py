"""A model's output-token norms per layer over images (`vitreg inspect`); DIR/inspect.json when ``out`` is set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vitreg.config import to_dict, validate_all
from vitreg.jobs.specs import ImageSpec, ModelSpec, Runtime
from vitreg.results.inspect import InspectResult


@dataclass(kw_only=True)
class InspectConfig:
    model: ModelSpec
    images: ImageSpec = field(default_factory=ImageSpec)
    runtime: Runtime = field(default_factory=Runtime)
    out: str | None = None


def inspect(cfg: InspectConfig) -> InspectResult:
    from vitreg.analysis.layer_norms import layer_norms
    from vitreg.results.rundir import write_result

    validate_all(cfg)
    model, device, dtype = cfg.model.start(cfg.runtime)
    summary = layer_norms(model, cfg.images.batches(model, cfg.runtime.seed), device, dtype)
    result = InspectResult(model=cfg.model.spec, images=cfg.images.src, config=to_dict(cfg), **vars(summary))
    if cfg.out:
        write_result(Path(cfg.out), result)
    return result
