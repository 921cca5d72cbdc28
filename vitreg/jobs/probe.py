"""Token probes (local / global information of outlier vs normal patch tokens) and linear classification / dense
probes on frozen features (`vitreg probe`). Writes DIR/probe.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vitreg.analysis.outlier_rule import NORM_RULES, OutlierRule
from vitreg.config import to_dict, validate_all
from vitreg.errors import ConfigError, DataError
from vitreg.jobs.specs import ImageSpec, ModelSpec, Runtime
from vitreg.results.diagnose import BadImage
from vitreg.results.probe import DenseProbes, ProbeResult, Threshold

PROBES = ("local", "global", "linear", "dense")


@dataclass(kw_only=True)
class ProbeConfig:
    model: ModelSpec
    images: ImageSpec = field(default_factory=ImageSpec)
    runtime: Runtime = field(default_factory=Runtime)
    rule: OutlierRule = field(default_factory=OutlierRule)  # on last-block patch-token norms, before the final norm
    probes: list[str] = field(default_factory=lambda: list(PROBES))
    tokens: Literal["prenorm", "normed"] = "prenorm"  # features of the local/global probes
    seeds: int = 3  # seeds of the global-information probe (mean ± std)
    test_fraction: float = 0.5  # share of the images held out for evaluation
    epochs: int = 60  # training epochs per probe (at least 300 steps)
    mlp: bool = True  # the MLP pixel probe besides the linear one
    out: str

    def validate(self) -> None:
        unknown = sorted(set(self.probes) - set(PROBES))
        if unknown or not self.probes:
            raise ConfigError(f"unknown probe {unknown[0] if unknown else '(none)'}; choose from {', '.join(PROBES)}")
        self.rule.validate(NORM_RULES)
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.seeds < 1 or self.epochs < 1:
            raise ConfigError("--seeds and --epochs must be >= 1")

    @staticmethod
    def upgrade_keys(data: dict[str, Any]) -> dict[str, Any]:
        """Configs saved before :class:`OutlierRule` spelled the rule ``rule: percentile`` with ``value: 98`` beside
        it: read as ``rule: {kind: percentile, value: 98}`` (vitreg.config calls this)."""
        return OutlierRule.upgrade(data, ("value",))


def probe(cfg: ProbeConfig) -> ProbeResult:
    """Run every requested probe the data allows and write DIR/probe.json; returns its contents."""
    from vitreg.analysis.norms import find_threshold, outlier_stats
    from vitreg.eval.features import collect_features
    from vitreg.models.inspect import no_cls_notes, num_registers
    from vitreg.results.rundir import write_result

    validate_all(cfg)
    model, device, dtype = cfg.model.start(cfg.runtime)
    feats = collect_features(model, cfg.images.batches(model, cfg.runtime.seed), dtype=dtype, device=device)
    if feats.num_images < 4:
        raise DataError(f"probes need at least 4 usable images, got {feats.num_images}")
    thr = find_threshold(feats.norms, cfg.rule.kind, cfg.rule.value)
    result = ProbeResult(
        model=cfg.model.spec,
        registers=num_registers(model),
        images=cfg.images.src,
        num_images=feats.num_images,
        preprocessing=cfg.images.transform(model).describe(),
        bad_images=[BadImage(path=p, reason=r) for p, r in feats.bad],
        layer=feats.layer,
        threshold=Threshold(
            threshold=thr.threshold,
            rule=thr.rule,
            value=thr.value,
            bimodal=thr.bimodal,
            statistic=thr.statistic,
            kind=thr.rule,
        ),
        outliers=outlier_stats(feats.norms, thr.threshold),
        seed=cfg.runtime.seed,
        config=to_dict(cfg),
        notes=no_cls_notes(model, "probe"),
    )
    run_probes(result, feats, thr.threshold, cfg)
    write_result(Path(cfg.out), result)
    return result


def run_probes(result: ProbeResult, feats: Any, threshold: float | None, cfg: ProbeConfig) -> None:
    """Every requested probe the data allows, into ``result``; a probe whose annotations are missing is reported as
    skipped."""
    from vitreg.eval.linear import classification_probe, depth_probe, segmentation_probe
    from vitreg.eval.probes import global_probe, local_probes

    tf, ep, seed = cfg.test_fraction, cfg.epochs, cfg.runtime.seed
    if "local" in cfg.probes:
        result.local = local_probes(
            feats, threshold, tokens=cfg.tokens, test_fraction=tf, seed=seed, epochs=ep, mlp=cfg.mlp
        )
    no_labels = "the images have no labels"
    if "global" in cfg.probes:
        if feats.labels is not None:
            seeds = tuple(range(seed, seed + cfg.seeds))
            result.global_probe = global_probe(
                feats, threshold, tokens=cfg.tokens, seeds=seeds, test_fraction=tf, epochs=ep
            )
        else:
            result.skipped["global"] = no_labels
    if "linear" in cfg.probes:
        if feats.labels is not None:
            result.linear = classification_probe(feats, test_fraction=tf, seed=seed, epochs=ep)
        else:
            result.skipped["linear"] = no_labels
    if "dense" in cfg.probes:
        dense = DenseProbes()
        if feats.masks is not None:
            dense.segmentation = segmentation_probe(feats, test_fraction=tf, seed=seed, epochs=ep)
        else:
            result.skipped["segmentation"] = "the images have no masks"
        if feats.depth is not None:
            dense.depth = depth_probe(feats, test_fraction=tf, seed=seed, epochs=ep)
        else:
            result.skipped["depth"] = "the images have no depth maps"
        if dense.segmentation is not None or dense.depth is not None:
            result.dense = dense
