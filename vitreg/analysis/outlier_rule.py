"""The outlier rule: which patch tokens count as high-norm outliers, as one typed value, ``OutlierRule(kind, value)``,
for every config that takes one (diagnose, probe, fix), and the one check of its parameter (here; the analyses that
apply a rule, :func:`vitreg.analysis.norms.find_threshold` and the register-neuron search, call it too).

On the command line: ``--auto`` (default), ``--cutoff X``, ``--percentile P``, and for `vitreg fix` ``--sigma K``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vitreg.errors import ConfigError

#: The rules on a norm distribution (:func:`vitreg.analysis.norms.find_threshold`): diagnose and probe take these.
NORM_RULES = ("auto", "cutoff", "percentile")
#: ... and the test-time-register paper's heuristic, mean + K standard deviations (`vitreg fix`).
RULES = (*NORM_RULES, "sigma")
DEFAULT_SIGMA = 3.0  # K of the sigma rule when none is given (Jiang, Dravid et al.)

RuleKind = Literal["auto", "cutoff", "percentile", "sigma"]


def check_rule(kind: str, value: float | None, kinds: tuple[str, ...] = RULES) -> float:
    """The parameter of rule ``kind`` as a float (0.0 for auto, which has none; the sigma rule's K defaults to 3);
    ConfigError naming the rule and its flag when ``kind`` is not one of ``kinds`` or ``value`` does not fit it."""
    if kind not in kinds:
        raise ConfigError(f"unknown outlier rule {kind!r}; choose one of {', '.join(kinds)}")
    if kind == "cutoff" and (value is None or not math.isfinite(value) or value <= 0):
        raise ConfigError(f"the cutoff rule (--cutoff) needs a positive norm, got {value!r}")
    if kind == "percentile" and (value is None or not 0 < value < 100):
        raise ConfigError(f"the percentile rule (--percentile) needs a value strictly between 0 and 100, got {value!r}")
    if kind == "sigma":
        k = DEFAULT_SIGMA if value is None else value
        if not math.isfinite(k) or k <= 0:
            raise ConfigError(f"the sigma rule (--sigma) needs a positive number of standard deviations, got {value!r}")
        return float(k)
    return 0.0 if value is None else float(value)


@dataclass
class OutlierRule:
    """A token is an outlier when its norm is above the rule's threshold: ``auto`` (a data-driven split, none unless
    the norms are bimodal), ``cutoff`` (norm > value), ``percentile`` (above the value-th percentile) or ``sigma``
    (above mean + value standard deviations, default 3)."""

    kind: RuleKind = "auto"
    value: float | None = None  # cutoff: a norm; percentile: in (0, 100); sigma: K; auto: none

    def validate(self, kinds: tuple[str, ...] = RULES) -> None:
        check_rule(self.kind, self.value, kinds)

    @property
    def cutoff(self) -> float | None:
        """The fixed norm of a cutoff rule (the diagnose pass puts it on a histogram edge), else None."""
        return self.value if self.kind == "cutoff" else None

    @staticmethod
    def upgrade(data: Mapping[str, Any], flat: tuple[str, ...]) -> dict[str, Any]:
        """A saved config's dict with a rule spelled the way configs spelled it before this type, flat beside the
        other keys, read as ``rule: {kind, value}``: ``rule: percentile`` with its parameter in ``value`` (probe,
        fix: ``flat=("value",)``) or in the key the rule names (diagnose: ``flat=("cutoff", "percentile")``).
        Anything else is returned as it is, for the config reader to check."""
        out = dict(data)
        rule = out.get("rule")
        if not isinstance(rule, str) and not (rule is None and any(k in out for k in flat)):
            return out
        kind = out.pop("rule", "auto")
        params = {k: out.pop(k) for k in flat if k in out}
        out["rule"] = {"kind": kind, "value": params.get("value", params.get(kind))}
        return out
