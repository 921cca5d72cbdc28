"""Part II of `vitreg reproduce`: the paper's own fix on the released model of Part I: registers *trained into it*.
They are added post hoc, by self-distillation (`vitreg fix --method distill`, as PH-Reg does), not trained with the
model from scratch as in the paper; the report says so beside every claim.

The distilled model is the zoo's ``clip-vit-b16-openai-reg4`` when Part I's model is its base (trained once by the
same command, its provenance in the entry); with ``retrain`` or another released model it is distilled here, on
imagenet-sample (or the bundled photos when that folder is absent). Stages, all on Part I's measured images:

- **compare**: the released model (a), the distilled one (b) and Part I's test-time register (c) side by side
  (:func:`vitreg.jobs.distill.compare_distilled`): outliers per block, [CLS] cosine, the registers' norms and
  attention maps;
- **probes**: local information (position classifier and regression, pixel probes) and global information on the
  distilled model, as Part I runs them on the released one;
- **LOST**: CorLoc with keys and with values of the distilled model, beside Part I's without and with the test-time
  register.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from vitreg.jobs.distill import CompareConfig, DistillConfig
from vitreg.jobs.lost import LOST_BATCH_SIZE, LostConfig
from vitreg.jobs.probe import ProbeConfig
from vitreg.jobs.specs import ImageSpec, ModelSpec, Runtime
from vitreg.reproduce.released import (
    LOST_FEATURES,
    PROBE_SCENES,
    RELEASED_MODEL,
    ReleasedDirs,
    ReleasedModel,
    ReleasedPlan,
)
from vitreg.stages import Stage, job_stage

DISTILLED_MODEL = "zoo:clip-vit-b16-openai-reg4"
REGISTERS = 4
IMAGENET_ENV = "VITREG_IMAGENET_SAMPLE"  # an imagenet-sample folder anywhere
#: the zoo entry's distillation: `vitreg fix --method distill` with these settings (reproduce --retrain reruns it)
ZOO_STEPS = 300


@dataclass(frozen=True)
class DistilledDirs:
    """Every run directory of Part II, named here once."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "released" / "distilled"

    @property
    def train(self) -> Path:
        return self.base / "train"

    @property
    def compare(self) -> Path:
        return self.base / "compare"

    def probe(self, which: str) -> Path:
        return self.base / "probe" / which

    def lost(self, features: str) -> Path:
        return self.base / "lost" / features


def imagenet_candidates(cwd: Path | None = None) -> list[Path]:
    """Where Part II looks for imagenet-sample: $VITREG_IMAGENET_SAMPLE, then shared/data/imagenet-sample beside
    the working directory, its parent, or the source tree's parent."""
    cwd = Path.cwd() if cwd is None else cwd
    roots = [Path(os.environ[IMAGENET_ENV])] if os.environ.get(IMAGENET_ENV) else []
    roots += [cwd / "shared/data/imagenet-sample", cwd.parent / "shared/data/imagenet-sample"]
    roots.append(Path(__file__).resolve().parents[2].parent / "shared/data/imagenet-sample")
    return roots


def distill_images() -> ImageSpec:
    """The images the zoo entry was distilled on (imagenet-sample), or the bundled photos without it."""
    found = next((c for c in imagenet_candidates() if c.is_dir()), None)
    return ImageSpec(src=str(found) if found else "photos", batch_size=16)


def uses_zoo(plan: ReleasedPlan, retrain: bool) -> bool:
    """Whether Part II takes the zoo's distilled model (Part I's model is its base, and no retraining is asked)."""
    from vitreg.errors import VitregError
    from vitreg.models.load import zoo

    if retrain or plan.model != RELEASED_MODEL:
        return False
    try:
        entry = zoo.get(DISTILLED_MODEL)
    except VitregError:  # an entry missing from this install: distil here
        return False
    return entry.fetched


def distilled_spec(plan: ReleasedPlan, out: Path, retrain: bool) -> str:
    """The spec of Part II's model: the zoo entry, or the distillation this run trains."""
    return DISTILLED_MODEL if uses_zoo(plan, retrain) else str(DistilledDirs(Path(out)).train)


def distill_config(plan: ReleasedPlan, out: Path) -> DistillConfig:
    """The distillation of the zoo entry (and of ``--retrain``); a few steps on a few images with ``quick``."""
    images = distill_images()
    held = dataclasses.replace(plan.measure, batch_size=16)
    cfg = DistillConfig(
        model=ModelSpec(spec=plan.model),
        images=images,
        held_out=held,
        registers=REGISTERS,
        steps=ZOO_STEPS,
        progress=True,
        runtime=Runtime(threads=plan.threads),
        out=str(DistilledDirs(out).train),
    )
    if plan.quick:
        cfg = dataclasses.replace(
            cfg,
            images=dataclasses.replace(images, limit=16),
            steps=8,
            eval_every=4,
            checkpoint_every=4,
            eval_images=4,
            fit_limit=8,
        )
    return cfg


def distilled_stages(plan: ReleasedPlan, out: Path, part_one: list[Stage], retrain: bool) -> list[Stage]:
    """Part II's stages, after Part I's (nothing when Part I did not run)."""
    from vitreg.jobs.distill import compare_distilled, distill
    from vitreg.jobs.lost import lost
    from vitreg.jobs.probe import probe

    if plan.skipped or not part_one:
        return []
    dirs = DistilledDirs(Path(out))
    fix_stage = next(s for s in part_one if s.kind == "fix")
    anchor = next(s for s in fix_stage.upstream if s.kind == "model")  # the released model and its weights' digest
    runtime = Runtime(threads=plan.threads)
    spec = distilled_spec(plan, out, retrain)
    if spec == DISTILLED_MODEL:
        model_stage = Stage(
            name=f"model: {spec} (registers distilled into {plan.model})",
            kind="model",
            directory=dirs.base / "model",
            config=ReleasedModel(spec, _digest(spec)),
            work=lambda resume: None,
            upstream=[anchor],
            root=out,
        )
    else:
        cfg = distill_config(plan, out)
        model_stage = job_stage(
            f"registers distilled into {plan.model} ({REGISTERS}, post hoc)",
            "distill",
            cfg,
            lambda c: distill(c, resume=True),
            "distill.json",
            [anchor],
            out,
        )
    model = ModelSpec(spec=spec)
    compare_cfg = CompareConfig(
        model=ModelSpec(spec=plan.model),
        distilled=spec,
        neurons=str(ReleasedDirs(out).neurons),
        images=plan.measure,
        runtime=runtime,
        examples=plan.examples,
        out=str(dirs.compare),
    )
    name = f"compare: released vs {REGISTERS} distilled registers vs 1 test-time register on {plan.measured_on}"
    stages = [
        model_stage,
        job_stage(name, "compare", compare_cfg, compare_distilled, "comparison.json", [model_stage, fix_stage], out),
    ]
    local_cfg = ProbeConfig(
        model=model,
        images=plan.measure,
        runtime=runtime,
        probes=["local"],
        epochs=plan.probe_epochs,
        mlp=plan.probe_mlp,
        out=str(dirs.probe("local")),
    )
    stages.append(
        job_stage(
            f"probes (distilled): local information on {plan.measured_on}",
            "probe",
            local_cfg,
            probe,
            "probe.json",
            [model_stage],
            out,
        )
    )
    size = _size(plan)
    scenes = ImageSpec(src=f"{PROBE_SCENES},img_size={size}", limit=plan.probe_limit, batch_size=16)
    global_cfg = ProbeConfig(
        model=model,
        images=scenes,
        runtime=runtime,
        probes=["global"],
        epochs=plan.probe_epochs,
        seeds=plan.probe_seeds,
        out=str(dirs.probe("global")),
    )
    stages.append(
        job_stage(
            "probes (distilled): global information on labelled generated scenes",
            "probe",
            global_cfg,
            probe,
            "probe.json",
            [model_stage],
            out,
        )
    )
    if plan.coco:  # keys and values from the same forward passes
        first, *more = LOST_FEATURES
        lost_cfg = LostConfig(
            model=model,
            runtime=runtime,
            images=ImageSpec(src=plan.coco, limit=plan.lost_limit, batch_size=LOST_BATCH_SIZE),
            resize="squash",
            size=size,
            features=first,
            also={f: str(dirs.lost(f)) for f in more},
            out=str(dirs.lost(first)),
        )
        stages.append(
            job_stage(
                "LOST on coco-mini (keys, values), distilled registers",
                "lost",
                lost_cfg,
                lost,
                "lost.json",
                [model_stage],
                out,
            )
        )
    return stages


def _digest(spec: str) -> str:
    from vitreg.models.load import zoo

    return zoo.get(spec).sha256


def _size(plan: ReleasedPlan) -> int:
    from vitreg.models.load.checkpoints import architecture

    return int(plan.size or architecture(plan.model).img_size[0])
