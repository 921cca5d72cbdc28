"""How a claim of the paper is judged from our numbers: the three statuses, aggregation over seeds, and the tests
that a difference is more than noise."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from vitreg.results.reproduce import Claim, Stat

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTED = "not tested"
STATUS_MARK = {REPRODUCED: "reproduced", NOT_REPRODUCED: "NOT REPRODUCED", NOT_TESTED: "not tested"}


def agg(values: list[Any]) -> Stat | None:
    """Mean ± sample std over seeds of the values that exist; None when none does."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return Stat(mean=mean, std=std, n=len(vals), of=len(values), values=vals)


def claim(text: str, holds: bool | None, evidence: str, why_none: str = "", none_status: str = NOT_REPRODUCED) -> Claim:
    """A claim of the paper and whether this run supports it. ``holds`` is None when the run cannot show it (e.g. no
    outliers to probe): that is "not reproduced" with the reason, or ``none_status`` ("not tested") when the data
    for it was simply not there (coco-mini absent)."""
    if holds is None:
        return Claim(claim=text, status=none_status, evidence=why_none or evidence)
    return Claim(claim=text, status=REPRODUCED if holds else NOT_REPRODUCED, evidence=evidence)


def compare(a: Any, b: Any, op: Callable[[Any, Any], bool]) -> bool | None:
    return None if a is None or b is None else bool(op(a, b))


def corloc_gain(a: Stat | None, b: Stat | None, images: int | None) -> tuple[bool | None, str]:
    """Whether CorLoc went up by more than twice its standard error (binomial over images, and over seeds)."""
    if a is None or b is None or not images:
        return None, ""

    def se(v: Stat) -> float:
        return math.sqrt(max(v.mean * (1 - v.mean), 1e-12) / (images * v.n) + v.std**2 / v.n)

    margin = 2 * math.sqrt(se(a) ** 2 + se(b) ** 2)
    gain = b.mean - a.mean
    text = f"{a.mean:.3f} -> {b.mean:.3f} on {images} images (gain {gain:+.3f}; needs > {margin:.3f}, 2 s.e.)"
    return gain > margin, text


def no_worse(a: Stat | None, b: Stat | None, higher_better: bool) -> tuple[bool, str] | None:
    """Whether ``b`` is no worse than ``a``: within max(1 point, 2 std of the seeds)."""
    if a is None or b is None:
        return None
    tol = max(0.01, 2 * max(a.std, b.std))
    diff = (b.mean - a.mean) if higher_better else (a.mean - b.mean)
    return diff >= -tol, f"{a.mean:.3f} -> {b.mean:.3f} (tolerance {tol:.3f})"


def fmt(v: Stat | None) -> str:
    if v is None:
        return "n/a"
    return f"{v.mean:.3g}" + (f" ± {v.std:.2g}" if v.n > 1 else "")


def pct(v: Stat | None) -> str:
    return "n/a" if v is None else f"{100 * v.mean:.2f}%"
