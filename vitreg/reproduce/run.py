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
from vitreg.reproduce.stages import _config_text, build_stages, run_stage


def reproduce(plan: Plan, out: Path, runner: Callable[[list[str]], int] | None = None, log=print) -> dict:
    """Every stage of ``plan`` into ``out`` (taken from the cache when unchanged), then the report.

    ``runner`` runs one vitreg command line (default: :func:`vitreg.cli.main` in this process).
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
    records = []
    for i, stage in enumerate(stages, 1):
        records.append(run_stage(stage, i, len(stages) + 1, runner, log=log))
        log(f"    elapsed {(time.perf_counter() - t0) / 60:.1f} min")
    log(f"[{len(stages) + 1}/{len(stages) + 1}] report: collecting results and drawing figures")
    results = build_results(plan, out, records, _config_text(plan.config))
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out / "results.json")
    draw_figures(results, out)
    write_markdown(results, out)
    write_html(results, out)
    return results
