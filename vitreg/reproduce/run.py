"""Run the stages of a plan (each cached), then collect results.json and render report.md / report.html."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from vitreg import atomic
from vitreg.errors import ConfigError
from vitreg.reproduce.collect import LabPart, build_results
from vitreg.reproduce.distilled_items import DistilledPart
from vitreg.reproduce.part import Part
from vitreg.reproduce.plan import Plan
from vitreg.reproduce.pretrained import PairDirs, PairPlan, pair_results, pair_stages
from vitreg.reproduce.released import ReleasedPlan
from vitreg.reproduce.released_items import ReleasedPart
from vitreg.reproduce.render import draw_figures, write_html, write_markdown
from vitreg.results.reproduce import ReproduceResults, Timing
from vitreg.results.rundir import write_result
from vitreg.stages import Log, read_json, run_stages
from vitreg.train.config import resolve_config_path

TIMING = "timing.json"


def config_text(config: str) -> str:
    """The training config's YAML text, shown in the report."""
    path = resolve_config_path(config)
    try:
        return Path(path).read_text() if path else ""
    except OSError:
        return ""


def reproduce(plan: Plan, out: Path, log: Log = print) -> ReproduceResults:
    """Every stage of ``plan`` into ``out`` (taken from the cache when unchanged), then the report.

    ``plan.jobs`` > 1 trains that many models side by side, each in its own process on one thread; the other stages
    run one at a time in this process. Returns what OUT/results.json holds.
    """
    out = Path(out)
    plan = plan.pin_models()  # the zoo is asked once: a run uses the models it started with
    cfg = plan.train_config()  # a bad key or value fails here, before any training
    if cfg.data.kind != "synthetic":
        raise ConfigError(
            f"reproduce needs generated scenes (data.kind: synthetic) for its probes and LOST boxes; "
            f"config {plan.config!r} has data.kind={cfg.data.kind!r}"
        )
    if plan.coco_searched:
        log(f"coco-mini not found (looked in {', '.join(plan.coco_searched)}): LOST on photos is skipped")
    released = None
    if plan.released:  # Part I; a model that cannot be had here (not fetched, offline) is skipped, saying why
        from vitreg.reproduce.released import make_released_plan, prepare, standin

        model = str(standin(out)) if plan.standin else plan.released_model
        released = prepare(make_released_plan(plan.quick, plan.coco, plan.download, plan.threads, model), log)
    parts = make_parts(plan, out, released)
    stages = [s for part in parts for s in part.stages()]
    atomic.make_dirs(out)
    t0 = time.perf_counter()
    records = run_stages(stages, plan.jobs, log)
    log(f"[{len(stages) + 1}/{len(stages) + 1}] report: collecting results and drawing figures")
    results = build_results(plan, out, records, parts, config_text(plan.config), released)
    return _publish(results, out, records, time.perf_counter() - t0, parts=parts)


def make_parts(plan: Plan, out: Path, released: ReleasedPlan | None) -> list[Part]:
    """The parts of the run, in the report's order: I and II on the released model (unless it was skipped or not
    asked for), then III, the lab."""
    parts: list[Part] = []
    if released is not None and not released.skipped:
        one = ReleasedPart(released, out)
        parts += [one, DistilledPart(released, out, plan.retrain, one)]
    parts.append(LabPart(plan, out))
    return parts


def reproduce_pair(plan: PairPlan, out: Path, log: Log = print) -> ReproduceResults:
    """The paper's measurements on a pretrained pair (:mod:`vitreg.reproduce.pretrained`), cached like reproduce."""
    out = Path(out)
    stages = pair_stages(plan, out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = run_stages(stages, 1, log)
    log(f"[{len(stages) + 1}/{len(stages) + 1}] report: collecting results and drawing figures")
    results = pair_results(plan, out, records)
    return _publish(results, out, records, time.perf_counter() - t0, diag=PairDirs(out).diagnose)


def _publish(
    results: ReproduceResults,
    out: Path,
    records: list[dict],
    wall: float,
    diag: Path | None = None,
    parts: Sequence[Part] = (),
) -> ReproduceResults:
    """Timing, results.json, the figures, report.md and report.html."""
    if any(not r["cached"] for r in records):  # the last run that computed something: the real cost
        ran = sum(not r["cached"] for r in records)
        atomic.write_json(out / TIMING, {"wall_seconds": round(wall, 1), "stages_run": ran, "stages": len(records)})
    results.timing = Timing(this_run_seconds=round(wall, 1), last_computing_run=read_json(out / TIMING))
    write_result(out, results)
    draw_figures(results, out, diag, parts)
    write_markdown(results, out)
    write_html(results, out)
    return results
