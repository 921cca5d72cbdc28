"""results.json for `vitreg reproduce`: every number read from the stages' own output files, aggregated over seeds,
laid out like the paper (one item per figure or table, :mod:`vitreg.reproduce.items`) with the published figures
beside ours and a status for each of the paper's claims that the run can test. Nothing here is typed in."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vitreg.reproduce import items
from vitreg.reproduce.part import HEADINGS, Keep, Part
from vitreg.reproduce.pipeline import LabDirs, build_stages
from vitreg.reproduce.plan import Plan
from vitreg.reproduce.released import ReleasedPlan
from vitreg.reproduce.table import read_table
from vitreg.results.flops import FlopsResult
from vitreg.results.reproduce import Item, ModelSource, ReproduceResults, StageRecord
from vitreg.results.rundir import read_result
from vitreg.stages import Stage

TITLE = "vitreg reproduce: Vision Transformers Need Registers on a small ViT"
TITLE_BOTH = "vitreg reproduce: Vision Transformers Need Registers on a released model and on a small ViT"
LAB_MODEL = "artifact-lab ViT"


def coco_note(plan: Plan) -> str:
    if plan.coco or not plan.coco_searched:
        return ""
    return (
        f" coco-mini was not found (looked in {', '.join(plan.coco_searched)}; set VITREG_COCO_MINI or pass "
        "--coco JSON)."
    )


def model_sources(plan: Plan, out: Path) -> list[ModelSource]:
    """Which models the run used and where each came from (zoo entries with their provenance)."""
    from vitreg.models.load import zoo

    rows = []
    for seed in plan.seeds:
        for n in plan.registers:
            entry = plan.zoo_entry(seed, n)
            d = str(LabDirs(out).model(seed, n, entry))
            if entry is None:
                rows.append(ModelSource(registers=n, seed=seed, source="trained", directory=d))
                continue
            p = zoo.get(entry).provenance
            cpu = p.get("cpu") or {}
            rows.append(
                ModelSource(
                    registers=n, seed=seed, source="zoo", directory=d, zoo=entry, command=p.get("command"),
                    commit=p.get("commit"), update_minutes=p.get("update_minutes"),
                    cpu=f"{cpu.get('model', '?')}{' (native bf16)' if cpu.get('native_bf16') else ' (no native bf16)'}",
                )
            )  # fmt: skip
    return rows


def lab_items(plan: Plan, out: Path) -> list[Item]:
    """The lab part's items: the paper's figures and tables on the trained small ViTs, with their claims."""
    table = read_table(plan, out)
    base, reg = plan.compared
    found = [
        items.fig3(table, base, reg),
        items.fig4(table, base),
        items.fig5(table, base),
        items.table1(table, base),
        items.table2(table, base, reg),
        items.table3(table, base, reg, plan.registers, bool(plan.coco), coco_note(plan)),
    ]
    if len(plan.registers) > 2:
        found.append(items.fig8(table, base, plan.registers))
    found.append(items.fig12(read_result(LabDirs(out).flops, FlopsResult)))
    found.append(items.fig14(base, reg))
    lab = f"{LAB_MODEL} ({base} vs {reg} registers)"
    for it in found:
        for c in it.claims:
            c.item, c.model = it.id, lab
    return found


def build_results(
    plan: Plan,
    out: Path,
    stages: list[dict],
    parts: Sequence[Part],
    train_cfg_text: str = "",
    released: ReleasedPlan | None = None,
) -> ReproduceResults:
    """Every part's items, under its key (Part I, when it ran: the paper's analyses and test-time registers on a
    released model; Part II: registers distilled into it; Part III: the lab models), into one results.json."""
    found: list[Item] = []
    for part in parts:
        for it in part.items():
            it.part = part.key if len(parts) > 1 or released is not None else ""
            found.append(it)
    table = read_table(plan, out)
    base, reg = plan.compared
    notes = [coco_note(plan).strip()] if coco_note(plan) else []
    if released is not None and released.skipped:
        notes.insert(0, f"Part I (a released model, {released.model}) was skipped: {released.skipped}")
    return ReproduceResults(
        title=TITLE_BOTH if released is not None else TITLE,
        plan=vars(plan).copy(),
        config=train_cfg_text,
        registers=plan.registers,
        compared=[base, reg],
        seeds=plan.seeds,
        items=found,
        claims=[c for it in found for c in it.claims],
        per_model={str(n): {str(s): r for s, r in rows.items()} for n, rows in table.items()},
        stages=[StageRecord(**s) for s in stages],
        models=model_sources(plan, out),
        notes=notes,
        released=dataclasses.asdict(released) if released is not None else {},
    )


@dataclass
class LabPart:
    """Part III (the only part with ``--no-released``): registers trained into a small ViT from scratch, the
    artifact lab; its figures need the whole results (every model's row) and are drawn by the report."""

    plan: Plan
    out: Path
    key: str = "III"
    heading: str = HEADINGS["III"]

    def stages(self) -> list[Stage]:
        return build_stages(self.plan, self.out)

    def items(self) -> list[Item]:
        return lab_items(self.plan, self.out)

    def figures(self, keep: Keep) -> None:
        return None  # drawn from results.json's rows of every model (vitreg.reproduce.render.draw_figures)
