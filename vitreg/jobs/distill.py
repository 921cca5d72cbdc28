"""Distil registers into a released model (`vitreg fix --method distill`): the paper's fix, registers trained into
the model, done post hoc by self-distillation as PH-Reg does (Chen, Yan et al. 2025), with vitreg's test-time
registers as the default teacher.

The run, in order (each step resumes from what an interrupted run left):

1. the register neurons: `vitreg fix`'s search on the first ``fit_limit`` training images (DIR/ttr/, a fix run
   directory), unless ``neurons`` names a neurons.json; the test-time-register teacher takes the smallest k that
   clears the outliers at every block (not only the last), doubling from the fix's choice;
2. the teacher's targets (:mod:`vitreg.distill.targets`), once per image and view, cached as fp16 shards;
3. the student (:mod:`vitreg.distill.student`) trained against them (:mod:`vitreg.distill.loop`): checkpoints every
   ``checkpoint_every`` steps in DIR/train_state.safetensors, ``resume`` continues bitwise;
4. the model written as a delta to its base (DIR/delta.json + delta.safetensors: registers and changed weights in
   fp16, the base's spec and sha256), loaded back from disk, and measured on the held-out images: a diagnose run
   directory DIR/held_out with the original (a), the distilled model (b) and the test-time-register teacher (c),
   and DIR/distill.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitreg.config import to_dict, validate_all
from vitreg.errors import ConfigError, DataError
from vitreg.jobs.specs import ImageSpec, ModelSpec, Runtime
from vitreg.results.distill import Comparison, DistillLayer, DistillResult, ModelFigures

TTR_DIR = "ttr"  # the fix run whose neuron search the run uses
TEACHER_NEURONS = "teacher_neurons.json"  # the neurons (and k) of the test-time-register teacher
HELD_OUT = "held_out"
CONFIG_NAME = "config.yaml"


@dataclass(kw_only=True)
class DistillConfig:
    """Everything `vitreg fix --method distill` does (saved as DIR/config.yaml; ``--resume DIR`` reads it back)."""

    model: ModelSpec
    images: ImageSpec = field(default_factory=lambda: ImageSpec(src="photos", batch_size=16))
    held_out: ImageSpec | None = None  # other images to measure on (progress and the final figures)
    runtime: Runtime = field(default_factory=Runtime)
    registers: int = 4
    teacher: str = "ttr"  # ttr: test-time-register model, one pass; tta: PH-Reg's augmented original
    # which weights train beside the registers (vitreg.distill.student.UNLOCK_SETS): none by default, the smallest set
    # that cleared CLIP ViT-B/16 at every block with the test-time-register teacher (docs/distill.md)
    unlock: str = "registers"
    neurons: str | None = None  # a `vitreg fix` neurons.json (or its run directory) to use instead of a search
    top_k: int | None = None  # register neurons for the teacher and the neurons set (None: cleared at every block)
    fit_limit: int = 48  # training images the neuron search runs on
    clear: float = 0.05  # a block is cleared when at most this fraction of its original outlier share is left
    max_top_k: int = 64
    views: int = 10  # tta: views per image
    shift: float = 0.15  # tta: largest shift, as a share of the patch grid
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    register_lr: float = 1e-2
    weight_decay: float = 0.0
    eval_every: int = 50
    eval_images: int = 32  # held-out images measured during training (all of them at the end)
    checkpoint_every: int = 25
    progress: bool = True
    out: str

    def validate(self) -> None:
        from vitreg.distill.student import UNLOCK_SETS
        from vitreg.distill.targets import TEACHERS

        self.images.validate()
        if self.held_out is not None:
            self.held_out.validate()
        if self.model.test_time_registers:
            raise ConfigError("--test-time-registers: give the original model to `vitreg fix --method distill`")
        if not 1 <= self.registers <= 16:
            raise ConfigError(f"--registers must be between 1 and 16, got {self.registers}")
        if self.teacher not in TEACHERS:
            raise ConfigError(f"--teacher {self.teacher!r}: choose one of {', '.join(TEACHERS)}")
        if self.unlock not in UNLOCK_SETS:
            raise ConfigError(f"--unlock {self.unlock!r}: choose one of {', '.join(UNLOCK_SETS)}")
        for name in ("steps", "batch_size", "eval_every", "eval_images", "checkpoint_every", "fit_limit", "views"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1 or 'auto', got {self.top_k}")
        if not 0 < self.shift < 0.5:
            raise ConfigError(f"--shift must be a share of the grid in (0, 0.5), got {self.shift}")
        if not 0 <= self.clear < 1:
            raise ConfigError(f"--clear must be a fraction in [0, 1), got {self.clear}")
        if self.lr <= 0 or self.register_lr <= 0 or self.weight_decay < 0:
            raise ConfigError("--lr and --register-lr must be > 0, --weight-decay >= 0")


def distill(cfg: DistillConfig, resume: bool = False) -> DistillResult:
    """Run the distillation of ``cfg`` into ``cfg.out`` (continuing an interrupted run there when ``resume``) and
    write its run directory; returns what distill.json holds."""
    from vitreg.config import save_config
    from vitreg.models.load.delta import DELTA_CONFIG
    from vitreg.runlock import run_lock
    from vitreg.train.checkpoint import STATE_NAME

    validate_all(cfg)
    cfg.model.check()
    out = Path(cfg.out)
    with run_lock(out, "fix --method distill"):
        started = (out / STATE_NAME).is_file() or (out / DELTA_CONFIG).is_file()
        if started and not resume:
            raise ConfigError(f"{out} already holds a distillation; continue it with `vitreg fix --resume {out}`")
        save_config(cfg, out, CONFIG_NAME)
        return _run(cfg, out, resume)


def resume_distill(directory: str | Path) -> DistillResult:
    """Continue the distillation in ``directory`` from its last checkpoint (its config.yaml)."""
    from vitreg.config import load_config

    directory = Path(directory)
    saved = directory / CONFIG_NAME
    if not saved.is_file():
        raise ConfigError(f"{directory} has no {CONFIG_NAME}: not a vitreg distillation run")
    cfg = load_config(DistillConfig, saved)
    if Path(cfg.out).resolve() != directory.resolve():
        cfg = dataclasses.replace(cfg, out=str(directory))
    return distill(cfg, resume=True)


# ------------------------------------------------------------------------------------------------- the run
@dataclass
class _Images:
    x: Any  # (n, 3, H, W) float32, normalised for the model
    digest: str  # of the pixels: the targets' cache key
    source: str


def _decode(spec: ImageSpec, transform: Any, seed: int, what: str) -> _Images:
    """Every usable image of ``spec`` as one tensor (decoded once; every pass below reads it)."""
    import torch

    from vitreg.analysis.register_neurons import image_batches

    ds = spec.open(transform, seed=seed)
    batches = image_batches(list(spec.loader(ds)), spec.batch_size)
    if not batches:
        raise DataError(f"{what} {spec.src}: no usable images")
    x = torch.cat([b for b, _ in batches]).float().contiguous()
    return _Images(x, hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16], spec.src)


def _run(cfg: DistillConfig, out: Path, resume: bool) -> DistillResult:
    from vitreg import distributed as dist
    from vitreg.device import cpu_description, resolve_device, resolve_dtype, set_threads
    from vitreg.distill.loop import LoopSettings, Objective, train_student
    from vitreg.distill.measure import HeldOutMeter
    from vitreg.distill.student import Student
    from vitreg.distill.targets import TARGET_DIR, TeacherSpec, compute_targets, target_blocks
    from vitreg.models.ttr import add_test_time_registers

    set_threads(cfg.runtime.threads)
    device = resolve_device(cfg.runtime.device)
    dist.init_distributed(device)
    dtype = resolve_dtype(cfg.runtime.precision, device)  # training: bf16 where the hardware has it, else fp32
    base = cfg.model.load(device)
    from vitreg.models.registers import refuse_beit

    refuse_beit(base, "vitreg fix --method distill (registers)")  # before any work: a Beit takes no register
    for p in base.parameters():
        p.requires_grad_(False)
    transform = cfg.images.transform(base)  # the held-out images too: prepared the same way
    train = _decode(cfg.images, transform, cfg.runtime.seed, "--images")
    held = None
    if cfg.held_out is not None:  # the images measured while training; the final figures take them all
        some = dataclasses.replace(cfg.held_out, limit=min(cfg.eval_images, cfg.held_out.limit or cfg.eval_images))
        held = _decode(some, transform, cfg.runtime.seed, "--held-out")
    neurons, k = _teacher_neurons(cfg, base, train, out, device)
    depth = len(getattr(base, "blocks"))  # noqa: B009
    pairs = [(n.layer, n.index) for n in neurons[:k]]
    if cfg.teacher == "ttr" and not pairs:
        raise ConfigError(
            f"{cfg.model.spec}: no register neurons to build the test-time-register teacher from "
            "(the model shows no outliers); --teacher tta needs none"
        )
    blocks = target_blocks(pairs, depth) if cfg.teacher == "ttr" else []
    teacher = add_test_time_registers(base, pairs, 1) if cfg.teacher == "ttr" else base
    spec = TeacherSpec(
        kind=cfg.teacher,
        blocks=blocks,
        neurons=pairs if cfg.teacher == "ttr" else [],
        views=cfg.views if cfg.teacher == "tta" else 1,
        shift=cfg.shift,
        seed=cfg.runtime.seed,
        dtype=str(dtype).replace("torch.", "") if dtype else "fp32",
    )
    targets = compute_targets(teacher, base, train.x, spec, out / TARGET_DIR, train.digest, dtype, device, cfg.progress)
    del teacher
    student = Student(base, cfg.registers, cfg.unlock, pairs, cfg.runtime.seed).to(device)
    meter = None
    if held is not None and dist.is_main():
        meter = HeldOutMeter(base, held.x, device, dtype)
    settings = LoopSettings(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        register_lr=cfg.register_lr,
        weight_decay=cfg.weight_decay,
        eval_every=cfg.eval_every,
        checkpoint_every=cfg.checkpoint_every,
        seed=cfg.runtime.seed,
        progress=cfg.progress,
    )
    objective = Objective(student, targets, cfg.teacher, blocks)
    loop = train_student(student, objective, train.x, settings, out, meter, device, dtype, resume)
    world = dist.get_world_size()
    if not dist.is_main():
        dist.barrier()
        return DistillResult(
            model=cfg.model.label,
            base=cfg.model.spec,
            registers=cfg.registers,
            teacher=cfg.teacher,
            unlock=cfg.unlock,
            unlock_description="",
            trained_parameters=0,
            top_k=k,
            target_blocks=blocks,
            images=len(train.x),
            source=train.source,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            preprocessing=transform.describe(),
        )
    from vitreg.distill.save import save_student
    from vitreg.distill.student import UNLOCK_SETS
    from vitreg.results.distill import Cost
    from vitreg.results.rundir import write_result

    delta_bytes = save_student(student, base, cfg.model, out, provenance=_provenance(cfg, k, train, loop))
    result = DistillResult(
        model=cfg.model.label,
        base=cfg.model.spec,
        registers=cfg.registers,
        teacher=cfg.teacher,
        unlock=cfg.unlock,
        unlock_description=UNLOCK_SETS[cfg.unlock],
        trained_parameters=student.parameter_count(),
        top_k=k,
        target_blocks=blocks,
        images=len(train.x),
        source=train.source,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        preprocessing=transform.describe(),
        delta_bytes=delta_bytes,
        flops_overhead=_flops_overhead(base, cfg.registers),
        cost=Cost(
            teacher_seconds=targets.seconds,
            teacher_forwards=targets.forwards,
            train_seconds=loop.seconds,
            images_per_s=loop.images_per_s,
            device=str(device),
            dtype=str(dtype).replace("torch.", "") if dtype else "fp32",
            world_size=world,
            cpu=cpu_description() if device.type == "cpu" else {},
        ),
        config=to_dict(cfg),
    )
    if world > 1:  # the comparison is a diagnose job of its own, which owns the process group: run it in one process
        result.notes.append(
            f"trained in {world} processes; the held-out comparison was not run here: `vitreg fix --resume {out}` in "
            "one process finds the training finished and measures it"
        )
    elif cfg.held_out is not None:
        result.held_out = compare_distilled(
            CompareConfig(
                model=cfg.model,
                distilled=str(out),
                neurons=str(out / TEACHER_NEURONS) if k else None,
                images=cfg.held_out,
                runtime=cfg.runtime,
                out=str(out / HELD_OUT),
            )
        )
    result.outcome = outcome(result)
    write_result(out, result)
    dist.barrier()
    return result


def _teacher_neurons(cfg: DistillConfig, base: Any, train: _Images, out: Path, device: Any) -> tuple[Any, int]:
    """The ranked register neurons and how many the teacher (and the neurons set) take: ``cfg.top_k``, or the
    smallest k (doubling from the fix's own choice) that clears the outliers at every block of the fit images.
    Written as DIR/teacher_neurons.json, which a resumed run reads back."""
    from vitreg import atomic
    from vitreg import distributed as dist
    from vitreg.jobs.fix import FixConfig, fix
    from vitreg.results.codec import to_json
    from vitreg.results.fix import read_neurons

    chosen = out / TEACHER_NEURONS
    if chosen.is_file():
        found = read_neurons(chosen)
        return found.search, found.top_k
    if cfg.neurons:
        found = read_neurons(cfg.neurons)
    elif dist.get_world_size() > 1:  # the search is a diagnose job of its own, which owns the process group
        raise ConfigError(
            "under torchrun, give the register neurons: run `vitreg fix --model M --images SRC --out N` in one "
            "process first, then pass --neurons N/neurons.json"
        )
    else:
        ttr_dir = out / TTR_DIR
        if dist.is_main() and not (ttr_dir / "neurons.json").is_file():
            fit = dataclasses.replace(cfg.images, limit=min(cfg.fit_limit, cfg.images.limit or cfg.fit_limit))
            fix(
                FixConfig(
                    model=cfg.model,
                    images=fit,
                    runtime=cfg.runtime,
                    registers=1,
                    clear=cfg.clear,
                    max_top_k=cfg.max_top_k,
                    out=str(ttr_dir),
                )
            )
        dist.barrier()
        found = read_neurons(ttr_dir / "neurons.json")
    k = cfg.top_k if cfg.top_k is not None else _clear_every_block(cfg, base, found, train, device)
    k = min(k, len(found.search))
    found = dataclasses.replace(found, top_k=k)
    if dist.is_main():
        atomic.write_json(chosen, to_json(found))
    return found.search, k


def _clear_every_block(cfg: DistillConfig, base: Any, found: Any, train: _Images, device: Any) -> int:
    """The smallest k in (fix's k, 2k, 4k, ... max_top_k) whose test-time register leaves at most ``clear`` of
    the original outlier share at every block of the fit images (the fix's choice checks the last block only)."""
    from vitreg.distill.measure import HeldOutMeter
    from vitreg.models.ttr import add_test_time_registers

    k = found.top_k
    if not k:
        return 0
    meter = HeldOutMeter(base, train.x[: cfg.fit_limit], device, None)
    limit = min(cfg.max_top_k, len(found.search))
    while True:
        ttr = add_test_time_registers(base, [(n.layer, n.index) for n in found.search[:k]], 1)
        point = meter.measure(ttr, 1)
        cleared = all(a <= cfg.clear * b for a, b in zip(point.shares, meter.before.shares, strict=True))
        if cleared or k >= limit:
            return k
        k = min(2 * k, limit)


def _provenance(cfg: DistillConfig, k: int, train: _Images, loop: Any) -> dict[str, Any]:
    from vitreg.device import cpu_description
    from vitreg.train.publish import source_commit

    return {
        "method": "registers distilled into the base (vitreg fix --method distill)",
        "teacher": cfg.teacher,
        "unlock": cfg.unlock,
        "top_k": k,
        "images": len(train.x),
        "images_source": train.source,
        "images_digest": train.digest,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "train_minutes": round(loop.seconds / 60, 2),
        "commit": source_commit(),
        "cpu": cpu_description(),
    }


def _flops_overhead(model: Any, registers: int) -> float | None:
    from vitreg.flops import count
    from vitreg.models.presets import config_of

    cfg = getattr(model, "vitreg_config", None)
    if cfg is None:
        return None
    base = config_of(model)
    return count(base, base.registers + registers)["flops"] / count(base, base.registers)["flops"] - 1.0


@dataclass(kw_only=True)
class CompareConfig:
    """The original, its distilled model and the original with one test-time register on the same images."""

    model: ModelSpec  # the original
    distilled: str  # the model with registers distilled into it (a delta folder, a zoo entry)
    neurons: str | None = None  # a neurons.json for the test-time register (None: that column is left out)
    images: ImageSpec = field(default_factory=lambda: ImageSpec(src="photos", batch_size=16))
    runtime: Runtime = field(default_factory=Runtime)
    examples: int = 6
    out: str

    def validate(self) -> None:
        self.images.validate()


def compare_distilled(cfg: CompareConfig) -> Comparison:
    """Measure the three models of ``cfg`` on its images: a diagnose run directory in ``cfg.out`` (a = original,
    b = distilled, c = test-time register), each one's outliers per block above the original's threshold, its final
    [CLS] cosine to the original's and its added registers' norms; written as ``comparison.json``.

    The images are decoded once and each model forwards each image once: its diagnose pass also gives the final
    [CLS] the cosine needs."""
    import torch

    from vitreg.analysis.diagnose import diagnose_model
    from vitreg.jobs.diagnose import DiagnoseConfig, DonePass, ModelEntry, diagnose
    from vitreg.jobs.fix import layer_shares
    from vitreg.models.inspect import num_registers
    from vitreg.results.fix import read_neurons
    from vitreg.results.rundir import write_result

    validate_all(cfg)
    out = Path(cfg.out)
    spec = to_dict(cfg.model)
    entries = [
        ModelEntry(key="a", **spec),
        ModelEntry(key="b", **(spec | {"spec": cfg.distilled, "weights": None, "registers": None})),
    ]
    if cfg.neurons:
        entries.append(ModelEntry(key="c", **(spec | {"test_time_registers": cfg.neurons})))
    for e in entries:
        e.check()
    runtime = dataclasses.replace(cfg.runtime, precision="auto")  # measured as every inference job: fp32
    device, dtype = runtime.start()
    models = {e.key: e.load(device) for e in entries}
    transform = cfg.images.transform(models["a"])
    ds = cfg.images.open(transform, seed=cfg.runtime.seed)
    loaded = list(cfg.images.loader(ds))  # decoded once: every model's pass runs over these batches
    cls: dict[str, list[torch.Tensor]] = {k: [] for k in models}
    done = {}
    for key, model in models.items():

        def keep_cls(_i: int, _batch: dict, cap: object, key: str = key) -> None:
            normed = getattr(cap, "normed", None)  # (B, N, C) after the final norm
            if normed is not None and getattr(models[key], "cls_token", None) is not None:
                cls[key].append(normed[:, 0].float().cpu())

        stream = diagnose_model(
            model,
            loaded,
            transform.input_size,
            transform.denormalize,
            dtype=dtype,
            examples=cfg.examples,
            total=len(ds),
            desc=f"compare {key}",
            observe=keep_cls,
        )
        done[key] = DonePass(stream, transform)
    metrics = diagnose(
        DiagnoseConfig(models=entries, images=cfg.images, runtime=runtime, examples=cfg.examples, out=str(out)),
        done=done,
    )
    by_key = {m.key: m for m in metrics.models}
    shares = {m.key: layer_shares(out, metrics, after=m.key) for m in metrics.models if m.key != "a"}
    added = {"a": 0, "b": num_registers(models["b"]) - num_registers(models["a"])}
    neurons = read_neurons(cfg.neurons) if cfg.neurons else None
    if neurons is not None:
        added["c"] = neurons.registers
    reference = torch.cat(cls["a"]) if cls["a"] else None
    figures = {}
    for key, extra in added.items():
        m = by_key[key]
        rows = shares.get(key)
        per_block = [r.share_before for r in shares["b"]] if rows is None else [r.share_after for r in rows]
        regs = [r for r in m.output.register_norms_mean[len(m.output.register_norms_mean) - extra :] if r is not None]
        cos = None
        if reference is not None and cls[key]:
            cos = float(torch.nn.functional.cosine_similarity(torch.cat(cls[key]), reference, dim=-1).median())
        figures[key] = ModelFigures(
            outlier_share=per_block[-1],
            worst_share=max(per_block),
            bimodal=m.rule.bimodal,
            cls_cosine=cos,
            register_norm=sum(regs) / len(regs) if extra and regs else None,
            patch_norm=m.output.median_norm_normal,
        )
    result = Comparison(
        original_spec=cfg.model.spec,
        distilled_spec=cfg.distilled,
        registers=added["b"],
        images=metrics.models[0].images,
        source=cfg.images.src,
        directory=".",
        layers=[
            DistillLayer(
                layer=r.layer,
                threshold=r.threshold,
                share_before=r.share_before,
                share_after=r.share_after,
                share_ttr=shares["c"][i].share_after if "c" in shares else None,
                bimodal_after=by_key["b"].layers[i].bimodal,
                threshold_after=r.threshold_after,
            )
            for i, r in enumerate(shares["b"])
        ],
        original=figures["a"],
        distilled=figures["b"],
        ttr=figures.get("c"),
        ttr_neurons=neurons.top_k if neurons is not None else 0,
    )
    write_result(out, result)
    return result


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def outcome(result: DistillResult) -> str:
    """One line: what the distillation did, on the held-out images when there are some."""
    line = (
        f"distilled {result.registers} register(s) into {result.base} ({result.teacher} teacher, {result.unlock}: "
        f"{result.trained_parameters:,} numbers trained, {result.steps} steps on {result.images} images)"
    )
    h = result.held_out
    if h is not None:
        a, b = h.original, h.distilled
        line += (
            f"; held out ({h.images} images): outliers at the last block {_pct(a.outlier_share)} -> "
            f"{_pct(b.outlier_share)}, worst block {_pct(a.worst_share)} -> {_pct(b.worst_share)}"
        )
        if b.cls_cosine is not None:
            line += f"; final [CLS] cosine to the original {b.cls_cosine:.3f}"
    return line
