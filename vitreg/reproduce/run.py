"""Run the stages of a plan (each cached), then collect results.json and render report.md / report.html."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from vitreg.config import ConfigError
from vitreg.models import model_config
from vitreg.reproduce.collect import build_results
from vitreg.reproduce.plan import Plan
from vitreg.reproduce.render import draw_figures, write_html, write_markdown
from vitreg.reproduce.stages import _config_text, _read_json, build_stages, run_side_by_side, run_stage


def reproduce(
    plan: Plan, out: Path, runner: Callable[[list[str]], int] | None = None, log=print, jobs: int = 1
) -> dict:
    """Every stage of ``plan`` into ``out`` (taken from the cache when unchanged), then the report.

    ``runner`` runs one vitreg command line (default: :func:`vitreg.cli.main` in this process). ``jobs`` > 1 trains
    that many models side by side, each in its own process on one thread; the other stages run one at a time.
    Returns the results dict also written to OUT/results.json.
    """
    if runner is None:
        from vitreg.cli import main as runner
    out = Path(out)
    cfg = plan.train_config()  # a bad key or value fails here, before any training
    if cfg.data.kind != "synthetic":
        raise ConfigError(
            f"reproduce needs generated scenes (data.kind: synthetic) for its probes and LOST boxes; "
            f"config {plan.config!r} has data.kind={cfg.data.kind!r}"
        )
    img_size = model_config(cfg.model, img_size=cfg.img_size).img_size
    stages = build_stages(plan, out, cfg, img_size)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    total = len(stages) + 1
    trains = [(i, s) for i, s in enumerate(stages, 1) if s.kind == "train"]
    records = run_side_by_side(trains, total, jobs, runner, log=log)
    log(f"    elapsed {(time.perf_counter() - t0) / 60:.1f} min")
    for i, stage in enumerate(stages, 1):
        if i not in records:
            records[i] = run_stage(stage, i, total, runner, log=log)
            log(f"    elapsed {(time.perf_counter() - t0) / 60:.1f} min")
    log(f"[{len(stages) + 1}/{len(stages) + 1}] report: collecting results and drawing figures")
    results = build_results(plan, out, [records[i] for i in sorted(records)], _config_text(plan.config))
    wall = time.perf_counter() - t0
    timing_path = out / "timing.json"
    if any(not r["cached"] for r in records.values()):  # the last run that computed something: the real cost
        timing_path.write_text(json.dumps({"wall_seconds": round(wall, 1), "stages_run": sum(
            not r["cached"] for r in records.values()), "stages": len(records)}))  # fmt: skip
    results["timing"] = {"this_run_seconds": round(wall, 1), "last_computing_run": _read_json(timing_path)}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out / "results.json")
    draw_figures(results, out)
    write_markdown(results, out)
    write_html(results, out)
    return results
