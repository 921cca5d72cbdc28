"""What `vitreg reproduce` runs: the models to train and the size of every evaluation, for the default, ``--quick``
and ``--ablation`` settings. A plan is plain data; the stages (:mod:`vitreg.reproduce.stages`) turn it into work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from vitreg.train.config import load_train_config

LAB_CONFIG = "artifact_lab"  # the artifact-lab preset (vitreg/configs/artifact_lab.yaml, docs/artifact-lab.md)
ABLATION_REGISTERS = [0, 1, 2, 4, 8, 16]
FLOPS_REGISTERS = [0, 1, 2, 4, 8, 16]
COCO_MINI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-mini"

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
    coco_limit: int | None = None
    coco_resize: int = 64  # LOST on the photos at S x S (our models are trained at 32 px)
    flops_models: list[str] = field(default_factory=lambda: ["vit_small_patch14_224", "vit_large_patch14_224"])
    threads: int | None = None
    jobs: int = 1  # trainings side by side
    scene_seed: int = 101  # generator seed of the evaluation scenes: never the training scenes

    @property
    def label(self) -> str:
        return "quick" if self.quick else "default"

    def train_config(self):
        """The resolved training config (raises ``ConfigError`` naming a bad key before any work)."""
        return load_train_config(self.config, self.train_overrides(seed=self.seeds[0], registers=self.registers[0]))

    def train_overrides(self, seed: int, registers: int) -> list[str]:
        # side-by-side trainings (jobs > 1) take one thread each unless told otherwise
        threads = self.threads or (1 if self.jobs > 1 else None)
        extra = [f"threads={threads}"] if threads else []
        return [*self.overrides, *extra, f"seed={seed}", f"registers={registers}", "progress=false"]


def make_plan(
    quick: bool = False,
    ablation: bool = False,
    seeds: int = 1,
    coco: str | Path | None = "auto",
    threads: int | None = None,
    jobs: int = 1,
    config: str | None = None,
    overrides: list[str] | None = None,
) -> Plan:
    """The default plan, shrunk by ``quick``; ``coco="auto"`` uses ../shared/data/coco-mini when it is there."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    plan = Plan(quick=quick, threads=threads, jobs=jobs, seeds=list(range(seeds)))
    if config:
        plan.config = config
    if ablation:
        plan.registers = list(ABLATION_REGISTERS)
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
        found = COCO_MINI / "annotations" / "instances_train2017.json"
        plan.coco = str(found) if found.is_file() else None
    elif coco:
        plan.coco = str(coco)
    return plan
