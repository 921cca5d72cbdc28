"""`vitreg reproduce --models A,B`: the paper's measurements on pretrained weights, with no training.

A is a model without registers and B the same family with them (e.g. ``dinov2_vitl14,dinov2_vitl14_reg``). The
protocols are the paper's: output patch-token norms and the outlier rule at 224 px (Sec. 2, Fig. 3), LOST on
VOC07 / VOC12 trainval and COCO20k at full resolution with the paper's features (keys for DINOv2, values for
DeiT-III and OpenCLIP; Sec. 3.3, Table 3), the token probes (Fig. 5b, Table 1) on generated scenes (the paper used
ImageNet, which is not here), and the FLOP overhead (Fig. 12). The published numbers of the family stand beside ours.
Random weights are accepted (``random_init``) to test the pipeline: the report then says that they reproduce nothing
and marks every claim "not tested".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from vitreg.data.scenes import SceneConfig
from vitreg.errors import ConfigError
from vitreg.jobs.diagnose import DiagnoseConfig, ModelEntry
from vitreg.jobs.flops import FlopsConfig
from vitreg.jobs.lost import FeatureKind, LostConfig
from vitreg.jobs.probe import ProbeConfig
from vitreg.jobs.specs import ImageSpec, ModelSpec, Runtime
from vitreg.reproduce import items, paper
from vitreg.reproduce.claims import NOT_TESTED, claim, corloc_gain
from vitreg.reproduce.table import Table, corloc_summary, diagnosis_fields, probe_fields, series, values
from vitreg.results.diagnose import DiagnoseResult
from vitreg.results.flops import FlopsResult
from vitreg.results.probe import ProbeResult
from vitreg.results.reproduce import Item, ModelRow, ReproduceResults, Row, StageRecord
from vitreg.results.rundir import read_result
from vitreg.stages import EVAL_SCENE_SEED, Stage, diagnose_stage, job_stage

DATASETS = ("VOC07", "VOC12", "COCO20k")  # Table 3's columns, in its order
FEATURES: dict[str, FeatureKind] = {
    "DINOv2": "k",
    "DeiT-III": "v",
    "OpenCLIP": "v",
}  # Sec. 3.3: "values for DeiT and OpenCLIP, keys for DINOv2"
NORM_SIZE = 224  # the resolution of the norm analysis and the probes
RANDOM = "random weights reproduce nothing: these numbers only show that every stage runs"


#: pretraining tags of OpenCLIP's own trainings (timm and Hub names carry them: laion2b, datacomp, ...)
OPENCLIP_TAGS = ("laion", "datacomp", "dfn", "metaclip", "commonpool", "openclip", "open_clip")


def family_of(spec: str) -> str | None:
    """The paper's model family a model belongs to, from what its name or folder says (None: it does not say, and
    ``--family`` must). OpenCLIP is a format (``openclip:``, a folder with ``open_clip_config.json``) or a training
    tag (laion2b, datacomp, ...); OpenAI's CLIP is none of the paper's families, whatever its name contains."""
    from pathlib import Path

    s = spec.lower()
    if "dinov2" in s:
        return "DINOv2"
    if "deit3" in s or "deit_3" in s:
        return "DeiT-III"
    folder = Path(spec)
    if s.startswith("openclip:") or any(t in s for t in OPENCLIP_TAGS) or (folder / "open_clip_config.json").is_file():
        return "OpenCLIP"
    return None


@dataclass
class PairPlan:
    models: list[ModelSpec]  # [without registers, with registers]
    registers: list[int]  # their register counts
    family: str
    datasets: dict[str, str] = field(default_factory=dict)  # VOC07 / VOC12: VOC roots; COCO20k: a COCO JSON
    images: str = "photos"  # the norm analysis' images
    diagnose_limit: int | None = None
    lost_limit: int | None = None
    lost_biases: list[float] = field(default_factory=lambda: [0.0])
    probe_limit: int = 256
    probe_epochs: int = 30
    probe_seeds: int = 3
    probe_mlp: bool = True  # the MLP pixel probe besides the linear one
    size: int = NORM_SIZE
    threads: int | None = None
    quick: bool = False

    @property
    def random(self) -> bool:
        return any(m.random_init for m in self.models)


def make_pair_plan(
    models: list[str],
    datasets: dict[str, str | None],
    family: str | None = None,
    images: str = "photos",
    random_init: bool = False,
    download: bool = False,
    quick: bool = False,
    threads: int | None = None,
) -> PairPlan:
    """Check the pair (every model resolved, no weights read) and the datasets before any work."""
    from vitreg.models.load.checkpoints import resolve

    if len(models) != 2:
        raise ConfigError(f"--models takes two models, without and with registers (A,B), got {len(models)}")
    family = family or family_of(models[0]) or family_of(models[1])
    if family not in FEATURES:
        raise ConfigError(f"--family: the paper's families are {', '.join(FEATURES)}; name one for {models}")
    specs = [ModelSpec(spec=m, random_init=random_init, download=download) for m in models]
    registers = []
    for s in specs:
        cfg = resolve(s.spec, random_init=random_init, download=download).config
        registers.append(cfg.registers)
    if registers[0] != 0 or registers[1] < 1:
        raise ConfigError(f"--models A,B: A without registers and B with them; got {registers[0]} and {registers[1]}")
    chosen = {name: str(path) for name, path in datasets.items() if path}
    for name, path in chosen.items():
        if not Path(path).exists():
            raise ConfigError(f"--{name.lower()} {path}: no such file or folder")
    plan = PairPlan(models=specs, registers=registers, family=family, datasets=chosen, images=images, threads=threads)
    if quick:
        plan = dataclasses.replace(plan, quick=True, diagnose_limit=4, lost_limit=3, probe_limit=12, probe_epochs=2,
                                   probe_seeds=1, probe_mlp=False, size=112)  # fmt: skip
    return plan


@dataclass(frozen=True)
class PairDirs:
    """Every run directory of a pretrained pair's run, named here once."""

    root: Path

    @property
    def diagnose(self) -> Path:
        return self.root / "diagnose"

    def probe(self, registers: int) -> Path:
        return self.root / "probe" / f"reg{registers}"

    def lost(self, dataset: str, registers: int) -> Path:
        return self.root / "lost" / dataset / f"reg{registers}"

    @property
    def flops(self) -> Path:
        return self.root / "flops"


def pair_stages(plan: PairPlan, out: Path) -> list[Stage]:
    from vitreg.jobs.flops import flops
    from vitreg.jobs.lost import lost
    from vitreg.jobs.probe import probe

    runtime = Runtime(threads=plan.threads)
    dirs = PairDirs(Path(out))
    sized = [dataclasses.replace(m, img_size=plan.size) for m in plan.models]
    diag = DiagnoseConfig(
        models=[ModelEntry(key=k, **vars(m)) for k, m in zip("ab", sized, strict=True)],
        images=ImageSpec(src=plan.images, limit=plan.diagnose_limit, batch_size=8),
        runtime=runtime, examples=4, out=str(dirs.diagnose),
    )  # fmt: skip
    stages = [diagnose_stage("diagnose: both models", diag, [], out, report=True)]
    scenes = ImageSpec(src="synthetic", scenes=SceneConfig(img_size=plan.size, task="shape", seed=EVAL_SCENE_SEED),
                       limit=plan.probe_limit, batch_size=8)  # fmt: skip
    for n, m in zip(plan.registers, sized, strict=True):
        cfg = ProbeConfig(model=m, images=scenes, runtime=runtime, epochs=plan.probe_epochs, seeds=plan.probe_seeds,
                          mlp=plan.probe_mlp, out=str(dirs.probe(n)))  # fmt: skip
        stages.append(job_stage(f"probe: {m.spec}", "probe", cfg, probe, "probe.json", [], out))
    for name, path in plan.datasets.items():
        for n, m in zip(plan.registers, plan.models, strict=True):
            lost_cfg = LostConfig(model=m, images=ImageSpec(src=path, limit=plan.lost_limit, batch_size=4),
                             features=FEATURES[plan.family], biases=plan.lost_biases, runtime=runtime,
                             out=str(dirs.lost(name, n)))  # fmt: skip
            stages.append(job_stage(f"LOST on {name}: {m.spec}", "lost", lost_cfg, lost, "lost.json", [], out))
    flops_cfg = FlopsConfig(models=[ModelSpec(spec=m.spec, random_init=True) for m in plan.models],
                            out=str(dirs.flops))  # fmt: skip
    stages.append(job_stage("FLOPs and parameters", "flops", flops_cfg, flops, "flops.json", [], out))
    return stages


def read_pair_table(plan: PairPlan, out: Path) -> Table:
    dirs = PairDirs(Path(out))
    diag = read_result(dirs.diagnose, DiagnoseResult)
    table: Table = {}
    for n, m in zip(plan.registers, diag.models, strict=True):
        row = ModelRow(**diagnosis_fields(m), **probe_fields(read_result(dirs.probe(n), ProbeResult)))
        row.corloc = {d: c for d in plan.datasets if (c := corloc_summary(dirs.lost(d, n))) is not None}
        table[n] = {0: row}
    return table


def table3(plan: PairPlan, table: Table) -> Item:
    base, reg = plan.registers
    without, with_reg = paper.CORLOC["rows"][plan.family]
    rows, claims = [], []
    for i, name in enumerate(DATASETS):
        if name not in plan.datasets:
            continue

        def get(r: ModelRow, name: str = name) -> float | None:
            return c.corloc if (c := r.corloc.get(name)) else None

        def count(r: ModelRow, name: str = name) -> int | None:
            return r.corloc[name].images if name in r.corloc else None

        rows.append(Row(quantity=f"CorLoc, {name}", paper=without[i], paper_reg=with_reg[i],
                        ours={str(n): series(table, n, get) for n in table}))  # fmt: skip
        images = values(table, base, count)[0]
        claims.append(claim(f"Registers improve LOST CorLoc ({name}, {plan.family})",
                            *corloc_gain(series(table, base, get), series(table, reg, get), images),
                            why_none=f"no CorLoc on {name}"))  # fmt: skip
    note = (
        f"LOST at full resolution on the {FEATURES[plan.family]} features of the last block "
        f"(Sec. 3.3), biases {', '.join(f'{b:g}' for b in plan.lost_biases)} (bias 0 shown). "
        + ("" if plan.datasets else "No dataset was given (--voc07 DIR, --voc12 DIR, --coco20k JSON).")
    )
    return Item(id="table3", title=f"Table 3: LOST CorLoc, {plan.family} without and with registers",
                source=paper.CORLOC["source"], rows=rows, claims=claims, note=note)  # fmt: skip


def pair_results(plan: PairPlan, out: Path, records: list[dict]) -> ReproduceResults:
    table = read_pair_table(plan, out)
    base, reg = plan.registers
    found = [items.fig3(table, base, reg), items.fig5(table, base), items.table1(table, base), table3(plan, table),
             items.fig12(read_result(PairDirs(Path(out)).flops, FlopsResult)), items.fig14(base, reg)]  # fmt: skip
    if plan.random:
        for it in found:  # nothing to reproduce: say so in every claim instead of judging noise
            it.claims = [claim(c.claim, None, c.evidence, why_none=f"{RANDOM}; {c.evidence}", none_status=NOT_TESTED)
                         for c in it.claims]  # fmt: skip
    for it in found:
        for c in it.claims:
            c.item = it.id
    names = " vs ".join(m.spec for m in plan.models)
    notes = [f"Pretrained pair ({plan.family}): {names}; registers {base} and {reg}; no training."]
    if plan.random:
        notes.insert(0, f"RANDOM WEIGHTS: {RANDOM}.")
    if plan.quick:
        notes.append(f"--quick: {plan.size} px, a few images per stage; the numbers mean nothing.")
    return ReproduceResults(
        title=f"vitreg reproduce: Vision Transformers Need Registers on {names}",
        plan=dataclasses.asdict(plan),
        config="",
        registers=plan.registers,
        compared=[base, reg],
        seeds=[0],
        items=found,
        claims=[c for it in found for c in it.claims],
        per_model={str(n): {"0": r[0]} for n, r in table.items()},
        stages=[StageRecord(**s) for s in records],
        notes=notes,
    )
