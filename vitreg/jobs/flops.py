"""FLOPs and parameters against the number of registers and the resolution, paper Fig. 12 (`vitreg flops`).
Writes DIR/flops.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitreg.config import to_dict, validate_all
from vitreg.errors import ConfigError
from vitreg.jobs.specs import ModelSpec
from vitreg.results.flops import FlopsModel, FlopsResult

#: The register counts of the paper's sweeps (Fig. 8 ablation and Fig. 12 overhead).
REGISTER_SWEEP: tuple[int, ...] = (0, 1, 2, 4, 8, 16)

COUNTED = (
    "one forward at batch 1 on the meta device with torch.utils.flop_counter.FlopCounterMode: "
    "matrix products and the patch convolution, 2 FLOPs per multiply-add"
)


@dataclass(kw_only=True)
class FlopsConfig:
    models: list[ModelSpec]
    register_counts: list[int] = field(default_factory=lambda: list(REGISTER_SWEEP))  # 0 is always added
    resolutions: list[int] | None = None  # input sizes (None: each model's own)
    out: str

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("--model needs at least one model")
        if min(self.register_counts, default=0) < 0:
            raise ConfigError(f"--register-counts needs non-negative integers, got {self.register_counts}")
        if self.resolutions is not None and (not self.resolutions or min(self.resolutions) < 1):
            raise ConfigError(f"--resolutions needs positive integers, got {self.resolutions}")


def architecture(model: ModelSpec) -> Any:
    """The model's ModelConfig, from its name or its files' config (no weights are read: they never change a FLOP
    count)."""
    from vitreg.models.load.checkpoints import architecture as read_architecture

    cfg = read_architecture(model.spec, registers=model.registers, img_size=model.img_size, download=model.download)
    if model.test_time_registers:  # the extra tokens are counted like registers (their hooks are a few gathers)
        from vitreg.results.fix import read_neurons

        neurons = read_neurons(model.test_time_registers)
        cfg.test_time_registers, cfg.register_neurons = (
            neurons.registers,
            [(n.layer, n.index) for n in neurons.selected],
        )
    return cfg


def flops(cfg: FlopsConfig) -> FlopsResult:
    import sys

    from tqdm import tqdm

    from vitreg.flops import flops_table
    from vitreg.results.rundir import write_result

    validate_all(cfg)
    counts = sorted(set(cfg.register_counts) | {0})
    resolutions: list[int | None] = list(cfg.resolutions) if cfg.resolutions else [None]
    models = []
    archs = [architecture(spec) for spec in cfg.models]
    for spec, arch in zip(cfg.models, archs, strict=True):  # every size checked before any counting
        bad = [r for r in cfg.resolutions or [] if r % arch.patch_size]
        if bad:
            raise ConfigError(
                f"--resolutions {bad[0]}: not a multiple of the patch size {arch.patch_size} of {spec.spec}"
            )
    # a large model at several resolutions takes seconds per row: one bar over every row
    bar = tqdm(total=len(cfg.models) * len(resolutions) * len(counts), desc="FLOPs", unit="row", file=sys.stderr,
               dynamic_ncols=True, leave=False)  # fmt: skip
    for spec, arch in zip(cfg.models, archs, strict=True):
        rows = flops_table(arch, counts, resolutions, tick=bar.update)
        models.append(
            FlopsModel(
                model=spec.label if spec.test_time_registers else spec.spec,
                width=arch.embed_dim,
                depth=arch.depth,
                patch_size=arch.patch_size,
                rows=rows,
            )
        )
    bar.close()
    result = FlopsResult(counted=COUNTED, models=models, config=to_dict(cfg))
    write_result(Path(cfg.out), result)
    return result
