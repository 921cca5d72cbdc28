"""The stages of `vitreg reproduce`, each one library call with its own job config and run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitreg.jobs.diagnose import DiagnoseConfig, ModelEntry
from vitreg.jobs.flops import REGISTER_SWEEP, FlopsConfig
from vitreg.jobs.lost import LOST_BATCH_SIZE, FeatureKind, LostConfig
from vitreg.jobs.probe import ProbeConfig
from vitreg.jobs.specs import ImageSpec, ModelSpec, Runtime
from vitreg.reproduce.plan import Plan
from vitreg.stages import Stage, diagnose_stage, evaluation_scenes, job_stage, train_stage, zoo_stage

LOST_FEATURES: FeatureKind = "v"  # the paper's choice for supervised (DeiT-III) models; keys are used for DINOv2


@dataclass(frozen=True)
class LabDirs:
    """Every run directory of the lab part, named here once (the stages write them, the tables read them)."""

    root: Path

    def model(self, seed: int, registers: int, zoo: str | None = None) -> Path:
        """Trained here (train/seedS/regN) or copied from zoo entry ``zoo`` (zoo/NAME, so a zoo run never replaces a
        model trained with --retrain, nor the other way round)."""
        return self.root / "zoo" / zoo if zoo else self.root / "train" / f"seed{seed}" / f"reg{registers}"

    def diagnose(self, seed: int) -> Path:
        return self.root / "diagnose" / f"seed{seed}"

    def probe(self, seed: int, registers: int) -> Path:
        return self.root / "probe" / f"seed{seed}" / f"reg{registers}"

    def lost(self, dataset: str, seed: int, registers: int) -> Path:
        return self.root / "lost" / dataset / f"seed{seed}" / f"reg{registers}"

    @property
    def flops(self) -> Path:
        return self.root / "flops"


def build_stages(plan: Plan, out: Path) -> list[Stage]:
    """Every stage of ``plan`` in the order they run (trainings first)."""
    from vitreg.jobs.flops import flops
    from vitreg.jobs.lost import lost
    from vitreg.jobs.probe import probe

    out = Path(out)
    dirs = LabDirs(out)
    scenes = evaluation_scenes(plan.train_config(), plan.scene_seed)
    runtime = Runtime(threads=plan.threads)
    trained: dict[tuple[int, int], Stage] = {}
    for seed in plan.seeds:
        for n in plan.registers:
            entry = plan.zoo_entry(seed, n)
            if entry is not None:
                from vitreg.models.load import zoo

                name = f"model: seed {seed}, {n} registers from zoo:{entry}"
                trained[(seed, n)] = zoo_stage(name, zoo.get(entry), dirs.model(seed, n, entry), out)
                continue
            cfg = plan.train_config(seed, n)
            trained[(seed, n)] = train_stage(f"train: seed {seed}, {n} registers", cfg, dirs.model(seed, n), out)
    stages = list(trained.values())
    for seed in plan.seeds:
        models = [trained[(seed, n)] for n in plan.registers]
        diag_cfg = DiagnoseConfig(
            models=[ModelEntry(key=f"s{i}", spec=str(m.directory)) for i, m in enumerate(models)],
            images=ImageSpec(src="synthetic", scenes=scenes, limit=plan.diagnose_limit),
            runtime=runtime,
            examples=plan.examples,
            sinks=True,  # attention sinks per block (docs/artifact-lab.md): sinks without high norms
            out=str(dirs.diagnose(seed)),
        )
        name = f"diagnose: seed {seed}, registers {', '.join(map(str, plan.registers))}"
        stages.append(diagnose_stage(name, diag_cfg, models, out, report=True))
    for (seed, n), m in trained.items():
        probe_cfg = ProbeConfig(
            model=ModelSpec(spec=str(m.directory)),
            images=ImageSpec(src="synthetic", scenes=scenes, limit=plan.probe_limit),
            runtime=runtime,
            epochs=plan.probe_epochs,
            seeds=plan.probe_seeds,
            out=str(dirs.probe(seed, n)),
        )
        stages.append(
            job_stage(f"probe: seed {seed}, {n} registers", "probe", probe_cfg, probe, "probe.json", [m], out)
        )
    batch = LOST_BATCH_SIZE
    lost_sets: list[tuple[str, ImageSpec, int | None]] = [
        ("synthetic", ImageSpec(src="synthetic", scenes=scenes, limit=plan.lost_limit, batch_size=batch), None)
    ]
    if plan.coco:
        lost_sets.append(("coco", ImageSpec(src=plan.coco, limit=plan.coco_limit, batch_size=batch), plan.coco_resize))
    for name, images, resize in lost_sets:
        for (seed, n), m in trained.items():
            lost_cfg = LostConfig(
                model=ModelSpec(spec=str(m.directory)),
                images=images,
                resize="squash",  # S x S (the synthetic scenes are drawn at the model's size)
                size=resize,
                features=LOST_FEATURES,
                runtime=Runtime(threads=plan.threads, seed=plan.scene_seed),
                out=str(dirs.lost(name, seed, n)),
            )
            stages.append(
                job_stage(f"LOST on {name}: seed {seed}, {n} registers", "lost", lost_cfg, lost, "lost.json", [m], out)
            )
    first = trained[(plan.seeds[0], plan.registers[0])]
    counted = [ModelSpec(spec=str(first.directory)), *(ModelSpec(spec=s) for s in plan.flops_models)]
    flops_cfg = FlopsConfig(models=counted, register_counts=list(REGISTER_SWEEP), out=str(dirs.flops))
    stages.append(job_stage("FLOPs and parameters", "flops", flops_cfg, flops, "flops.json", [first], out))
    return stages
