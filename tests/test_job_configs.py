"""Job configs: the one OutlierRule of diagnose, probe and fix (its check in one place), LOST's images as an
ImageSpec, and configs saved by an older vitreg (flat rule keys, LOST's flat image keys) read as today's."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vitreg.analysis.norms import find_threshold
from vitreg.analysis.outlier_rule import OutlierRule
from vitreg.config import from_dict, to_dict, validate_all
from vitreg.errors import ConfigError
from vitreg.jobs.diagnose import DiagnoseConfig, ModelEntry
from vitreg.jobs.fix import FixConfig
from vitreg.jobs.lost import LOST_BATCH_SIZE, LostConfig
from vitreg.jobs.probe import ProbeConfig
from vitreg.jobs.specs import ImageSpec, ModelSpec

MODEL = {"spec": "vit_pico_patch4_32", "random_init": True}


def _diagnose(**kw) -> DiagnoseConfig:
    return DiagnoseConfig(models=[ModelEntry(key="a", spec="vit_pico_patch4_32")], out="runs/x", **kw)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (OutlierRule("cutoff", None), "cutoff rule (--cutoff) needs a positive norm"),
        (OutlierRule("cutoff", -3.0), "cutoff rule (--cutoff) needs a positive norm"),
        (OutlierRule("percentile", 100.0), "percentile rule (--percentile) needs a value strictly between 0 and 100"),
        (OutlierRule("sigma", 0.0), "sigma rule (--sigma) needs a positive number"),
        (OutlierRule("median", 1.0), "unknown outlier rule 'median'"),  # type: ignore[arg-type]
    ],
)
def test_one_check_of_the_rule_everywhere(rule: OutlierRule, message: str):
    """The configs and the threshold finder say the same about a bad rule (the neuron search calls the same check)."""
    fix = FixConfig(model=ModelSpec(**MODEL), rule=rule, out="runs/x")
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_all(fix)
    if rule.kind != "sigma":
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate_all(_diagnose(rule=rule))
        with pytest.raises(ConfigError, match=re.escape(message)):
            find_threshold(np.ones(4), rule.kind, rule.value)


def test_sigma_is_for_fix_only():
    validate_all(FixConfig(model=ModelSpec(**MODEL), rule=OutlierRule("sigma"), out="runs/x"))  # K defaults to 3
    for cfg in (_diagnose(rule=OutlierRule("sigma", 3.0)), ProbeConfig(model=ModelSpec(**MODEL), out="x")):
        cfg.rule = OutlierRule("sigma", 3.0)
        with pytest.raises(ConfigError, match="unknown outlier rule 'sigma'; choose one of auto, cutoff, percentile"):
            validate_all(cfg)


@pytest.mark.parametrize(
    "cfg",
    [
        _diagnose(rule=OutlierRule("percentile", 98.0)),
        ProbeConfig(model=ModelSpec(**MODEL), rule=OutlierRule("cutoff", 150.0), out="runs/p"),
        FixConfig(model=ModelSpec(**MODEL), rule=OutlierRule("sigma", 2.5), out="runs/f"),
        LostConfig(model=ModelSpec(**MODEL), images=ImageSpec(src="synthetic:task=count", limit=6), out="runs/l"),
    ],
    ids=lambda c: type(c).__name__,
)
def test_saved_configs_read_back(cfg):
    assert from_dict(type(cfg), to_dict(cfg)) == cfg


def test_old_diagnose_rule_keys():
    """Before OutlierRule, diagnose saved ``rule`` with ``cutoff`` and ``percentile`` beside it."""
    base = to_dict(_diagnose())
    del base["rule"]
    old = base | {"rule": "percentile", "cutoff": None, "percentile": 98}
    assert from_dict(DiagnoseConfig, old).rule == OutlierRule("percentile", 98.0)
    old = base | {"rule": "cutoff", "cutoff": 150, "percentile": None}
    assert from_dict(DiagnoseConfig, old).rule == OutlierRule("cutoff", 150.0)
    assert from_dict(DiagnoseConfig, base | {"rule": "auto", "cutoff": None}).rule == OutlierRule()
    with pytest.raises(ConfigError, match="cutoff rule"):  # read, then checked like a new one
        from_dict(DiagnoseConfig, base | {"rule": "cutoff", "cutoff": None})


@pytest.mark.parametrize(("cls", "kind", "value"), [(ProbeConfig, "percentile", 98), (FixConfig, "sigma", 3)])
def test_old_probe_and_fix_rule_keys(cls, kind, value):
    """Before OutlierRule, probe and fix saved ``rule`` with ``value`` beside it."""
    old = {"model": MODEL, "rule": kind, "value": value, "out": "runs/x"}
    assert from_dict(cls, old).rule == OutlierRule(kind, float(value))
    assert from_dict(cls, {"model": MODEL, "rule": "auto", "value": None, "out": "runs/x"}).rule == OutlierRule()


def test_old_lost_image_keys():
    """Before LostConfig took an ImageSpec, its images were flat keys; ``dataset`` is now ``images.src``."""
    old = {"model": MODEL, "dataset": "/data/voc", "limit": 8, "strict": True, "workers": 2, "out": "runs/l"}
    cfg = from_dict(LostConfig, old)
    assert cfg.images == ImageSpec(src="/data/voc", limit=8, strict=True, workers=2, batch_size=LOST_BATCH_SIZE)
    assert from_dict(LostConfig, {"model": MODEL, "out": "runs/l"}).images.batch_size == LOST_BATCH_SIZE
    with pytest.raises(ConfigError, match="unknown config key 'dataset'"):  # not both layouts at once
        from_dict(LostConfig, {"model": MODEL, "images": {"src": "synthetic"}, "dataset": "x", "out": "runs/l"})


def test_lost_feature_kinds_match_the_evaluator():
    """The config names LOST's feature kinds without importing the evaluator (torch); both lists are the same."""
    from typing import get_args

    from vitreg.eval import lost as evaluator
    from vitreg.jobs import lost as job

    assert get_args(job.FeatureKind) == get_args(evaluator.FeatureKind)
