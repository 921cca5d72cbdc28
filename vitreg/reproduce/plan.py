"""What `vitreg reproduce` runs: the models to train and the size of every evaluation, for the default, ``--quick``
and ``--ablation`` settings. A plan is plain data; :mod:`vitreg.reproduce.pipeline` turns it into stages."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from vitreg.errors import ConfigError
from vitreg.jobs.flops import REGISTER_SWEEP
from vitreg.stages import EVAL_SCENE_SEED
from vitreg.train.config import TrainConfig, load_train_config

LAB_CONFIG = "artifact_lab"  # the artifact-lab preset (vitreg/configs/artifact_lab.yaml, docs/artifact-lab.md)
COCO_JSON = Path("annotations") / "instances_train2017.json"
COCO_ENV = "VITREG_COCO_MINI"  # a coco-mini folder anywhere

# --quick: a 2-block model for a few dozen steps. The numbers mean nothing; every stage and the report run for real.
QUICK_OVERRIDES = [
    "model=vit_pico_patch4_32",
    "depth=null",
    "embed_dim=null",
    "num_heads=null",
    "steps=40",
    "warmup_steps=5",
    "batch_size=32",
    "data.train_size=512",
    "data.eval_size=64",
    "track_every=10",
    "track_batch=16",
    "eval_every=40",
    "checkpoint_every=40",
    "keep_every=0",
]


@dataclass
class Plan:
    quick: bool = False
    config: str = LAB_CONFIG  # a packaged config name or a YAML file
    overrides: list[str] = field(default_factory=list)
    registers: list[int] = field(default_factory=lambda: [0, 4])
    seeds: list[int] = field(default_factory=lambda: [0])
    diagnose_limit: int = 512
    examples: int = 6
    probe_limit: int = 512
    probe_epochs: int = 30
    probe_seeds: int = 3
    lost_limit: int = 128
    coco: str | None = None  # a COCO instances JSON; None = skipped
    coco_searched: list[str] = field(default_factory=list)  # where --coco auto looked, when it found nothing
    coco_limit: int | None = None
    coco_resize: int = 64  # LOST on the photos at S x S (our models are trained at 32 px)
    flops_models: list[str] = field(default_factory=lambda: ["vit_small_patch14_224", "vit_large_patch14_224"])
    threads: int | None = None
    jobs: int = 1  # trainings side by side
    scene_seed: int = EVAL_SCENE_SEED
    retrain: bool = False  # train even where the model zoo holds a model trained from the same config
    released: bool = True  # Part I: the paper's analyses and test-time registers on a released model
    released_model: str = "zoo:clip-vit-b16-openai"
    standin: bool = False  # --quick without --released-model: Parts I and II on a tiny model with a planted neuron
    download: bool = False  # fetch the released model when it is not cached (`make demo` asks for it)
    # the zoo entry (or None: trained) of each "seed/registers", fixed by pin_models() when a run starts, so an
    # entry added to the zoo while the run trains does not change where its report looks for the models
    models: dict[str, str | None] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "quick" if self.quick else "default"

    @property
    def compared(self) -> tuple[int, int]:
        """The register counts the tables set side by side: the first, and 4 (or the last)."""
        return self.registers[0], (4 if 4 in self.registers else self.registers[-1])

    def train_config(self, seed: int | None = None, registers: int | None = None) -> TrainConfig:
        """The resolved training config of one model (raises ``ConfigError`` naming a bad key before any work)."""
        cfg = load_train_config(self.config, self.overrides)
        # side-by-side trainings (jobs > 1) take one thread each unless told otherwise
        threads = self.threads or (1 if self.jobs > 1 else None)
        return dataclasses.replace(
            cfg,
            seed=self.seeds[0] if seed is None else seed,
            registers=[self.registers[0] if registers is None else registers],
            threads=threads if threads else cfg.threads,
            progress=False,
        )

    def zoo_entry(self, seed: int, registers: int) -> str | None:
        """The zoo entry trained from exactly this model's config (runtime keys aside), unless ``retrain``."""
        if self.retrain:
            return None
        if f"{seed}/{registers}" in self.models:
            return self.models[f"{seed}/{registers}"]
        from vitreg.config import to_dict
        from vitreg.models.load import zoo

        entry = zoo.match(to_dict(self.train_config(seed, registers)))
        return entry.name if entry else None

    def pin_models(self) -> Plan:
        """A copy whose zoo choices are made now, once for the whole run."""
        chosen = {f"{s}/{n}": self.zoo_entry(s, n) for s in self.seeds for n in self.registers}
        return dataclasses.replace(self, models=chosen)


def coco_candidates(cwd: Path | None = None) -> list[Path]:
    """Where ``--coco auto`` looks for coco-mini, in order: $VITREG_COCO_MINI, then shared/data/coco-mini beside
    the working directory and its parent, then beside the source tree (a clone next to ../shared)."""
    cwd = Path.cwd() if cwd is None else cwd
    roots = [Path(os.environ[COCO_ENV])] if os.environ.get(COCO_ENV) else []
    roots += [cwd / "shared/data/coco-mini", cwd.parent / "shared/data/coco-mini"]
    roots.append(Path(__file__).resolve().parents[2].parent / "shared/data/coco-mini")
    return list(dict.fromkeys(r.resolve() for r in roots))


def make_plan(
    quick: bool = False,
    ablation: bool = False,
    seeds: int = 1,
    coco: str | Path | None = "auto",
    threads: int | None = None,
    jobs: int = 1,
    config: str | None = None,
    overrides: list[str] | None = None,
    retrain: bool = False,
    released: bool = True,
    released_model: str | None = None,
    download: bool = False,
) -> Plan:
    """The default plan, shrunk by ``quick``; ``coco="auto"`` uses coco-mini where :func:`coco_candidates` finds it."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    plan = Plan(quick=quick, threads=threads, jobs=jobs, seeds=list(range(seeds)), retrain=retrain, released=released,
                download=download)  # fmt: skip
    if released_model:
        plan.released_model = released_model
    elif quick:  # seconds, not minutes: a pico ViT with a planted register neuron stands in for the released CLIP
        plan.standin = True
    if config:
        plan.config = config
    if ablation:
        plan.registers = list(REGISTER_SWEEP)
    if quick:
        plan = dataclasses.replace(
            plan,
            overrides=list(QUICK_OVERRIDES),
            diagnose_limit=64,
            examples=2,
            probe_limit=48,
            probe_epochs=3,
            probe_seeds=2,
            lost_limit=16,
            coco_limit=6,
            coco_resize=32,
        )
    plan.overrides = [*plan.overrides, *(overrides or [])]
    if coco == "auto":
        candidates = coco_candidates()
        found = next((c / COCO_JSON for c in candidates if (c / COCO_JSON).is_file()), None)
        plan.coco = str(found) if found else None
        plan.coco_searched = [] if found else [str(c) for c in candidates]
    elif coco:
        if not Path(coco).is_file():
            raise ConfigError(f"--coco {coco}: no such file (give a COCO instances JSON, 'auto' or 'none')")
        plan.coco = str(coco)
    return plan
