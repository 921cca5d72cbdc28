"""Fix: find a model's register neurons and move them into test-time registers (`vitreg fix`).

Writes DIR/neurons.json (what ``--test-time-registers`` reads), the diagnosis of the original (``a``) and the fixed
model (``b``) side by side (DIR/metrics.json, arrays, as `vitreg diagnose --compare` does), DIR/fix.json (the top-k
sweep and the outlier share per block before and after) and, with ``save_model``, the fixed model in DIR/model/.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.analysis.outlier_rule import OutlierRule
from vitreg.config import to_dict, validate_all
from vitreg.errors import ConfigError
from vitreg.jobs.specs import ImageSpec, ModelSpec, Runtime
from vitreg.results.fix import FixLayer, FixResult, HeldOut, NeuronSearch, NeuronsFile, TopKSweep

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn as nn

    from vitreg.analysis.diagnose import Observer
    from vitreg.analysis.stream import NormStream
    from vitreg.analysis.ttr_sweep import OnBatch, SweepMeter
    from vitreg.data.transforms import ImageTransform
    from vitreg.jobs.diagnose import DonePass
    from vitreg.models.inspect import Capture, Resume

NEURONS_FILE = "neurons.json"
HELD_OUT = "held_out"  # the diagnose run directory of the held-out images, inside a fix run directory


@dataclass(kw_only=True)
class FixConfig:
    """Everything `vitreg fix` does (saved in fix.json)."""

    model: ModelSpec
    images: ImageSpec = field(default_factory=ImageSpec)
    runtime: Runtime = field(default_factory=Runtime)
    top_k: int | None = None  # None: auto, the smallest k that clears the outliers
    registers: int = 1  # test-time registers to add
    detect_layer: int = -1  # block whose output marks the outliers
    top_layer: int | None = None  # score units in blocks 0..top_layer (None: where the outliers first appear)
    rule: OutlierRule = field(default_factory=OutlierRule)  # marks the outliers at detect_layer (sigma too)
    sparse: float | None = None  # keep only units inactive on at least this share of the other patches
    max_top_k: int = 64  # the sweep's largest k
    clear: float = 0.05  # cleared: at most this fraction of the original outlier share left
    examples: int = 8
    save_model: bool = False
    held_out: ImageSpec | None = None  # other images to measure the chosen fix on (outliers, [CLS] cosine)
    out: str

    @staticmethod
    def upgrade_keys(data: dict[str, Any]) -> dict[str, Any]:
        """Configs saved before :class:`OutlierRule` spelled the rule ``rule: sigma`` with ``value: 3`` beside it:
        read as ``rule: {kind: sigma, value: 3}`` (vitreg.config calls this)."""
        return OutlierRule.upgrade(data, ("value",))

    def validate(self) -> None:
        if self.held_out is not None:
            self.held_out.validate()
        if self.model.test_time_registers:
            raise ConfigError("--test-time-registers: give the original model to `vitreg fix`")
        if not 1 <= self.registers <= 16:
            raise ConfigError(f"--registers must be between 1 and 16, got {self.registers}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1 or 'auto', got {self.top_k}")
        if self.max_top_k < 1:
            raise ConfigError(f"--max-top-k must be >= 1, got {self.max_top_k}")
        if not 0 <= self.clear < 1:
            raise ConfigError(f"--clear must be a fraction in [0, 1), got {self.clear}")
        if self.sparse is not None and not 0 < self.sparse <= 1:
            raise ConfigError(f"--sparse must be a share in (0, 1], got {self.sparse}")


def fix(cfg: FixConfig) -> FixResult:
    """Run `vitreg fix` and write its run directory; returns what fix.json holds.

    The images are decoded once and every pass runs over the same batches: the original model's one pass gives its
    diagnosis (``a``), the block norms the neuron search needs and the sweep's "before" point; the search's scoring
    pass stops after the last scored block; the sweep's passes share the blocks before the first moved neuron and
    each keeps its diagnosis, so the chosen k's is the fixed model's (``b``). The numbers are those of running each
    step on its own.
    """
    from vitreg import atomic
    from vitreg.models.inspect import no_cls_notes
    from vitreg.results.codec import to_json
    from vitreg.results.rundir import write_result

    validate_all(cfg)
    run = _FixRun.start(cfg)
    done = {"a": run.original()}
    search = run.search()
    sweep = run.sweep(search)
    top_k = sweep.chosen if sweep is not None else 0
    if top_k:
        done["b"] = run.kept_pass(top_k)
    out = Path(cfg.out)
    neurons = NeuronsFile(
        model=cfg.model.label, spec=cfg.model.spec, registers=cfg.registers, top_k=top_k, search=search
    )
    atomic.write_json(out / NEURONS_FILE, to_json(neurons))
    metrics = _diagnose(cfg, out, fixed=bool(top_k), done=done)
    result = FixResult(
        model=cfg.model.label,
        registers=cfg.registers,
        top_k=top_k,
        auto=cfg.top_k is None,
        outcome=outcome(search, sweep, cfg.registers),
        reason=search.reason,
        sweep=sweep,
        layers=layer_shares(out, metrics) if top_k else [],
        flops_overhead=_flops_overhead(run.model, cfg.registers) if top_k else None,
        config=to_dict(cfg),
        detect_layer=run.detect,
        notes=no_cls_notes(run.model, "fix"),
    )
    if cfg.held_out is not None:  # without neurons to move: the original's diagnosis there alone
        thr = float("inf") if search.threshold is None else float(search.threshold)
        result.held_out = _held_out(cfg, run.model, neurons if top_k else None, run.detect, thr, run.dtype, out)
    if top_k and cfg.save_model:
        from vitreg.models.load.checkpoints import save_model
        from vitreg.models.ttr import add_test_time_registers

        fixed = add_test_time_registers(run.model, neurons.selected, cfg.registers)
        result.saved_model = str(save_model(fixed, out / "model"))
    write_result(out, result)
    return result


@dataclass
class _FixRun:
    """One fix's model and decoded images, and the passes over them (each a diagnose pass at the detection block)."""

    cfg: FixConfig
    model: nn.Module
    dtype: torch.dtype | None
    detect: int  # the detection block (0-based)
    transform: ImageTransform
    total: int  # images in the source
    loaded: list[dict[str, Any]]  # the decoded batches every pass runs over
    labels: list[torch.Tensor | None]  # per usable batch
    norms: list[np.ndarray] = field(default_factory=list)  # the original's block norms, batch by batch
    before: SweepMeter | None = None
    passes: dict[int, NormStream] = field(default_factory=dict)  # k -> that fixed model's diagnosis

    @classmethod
    def start(cls, cfg: FixConfig) -> _FixRun:
        from vitreg.analysis.diagnose import resolve_layer
        from vitreg.analysis.register_neurons import image_batches
        from vitreg.device import inference_dtype
        from vitreg.models.registers import refuse_beit

        model, device, _ = cfg.model.start(cfg.runtime)
        refuse_beit(model, "vitreg fix (test-time registers)")  # before any pass: a Beit takes no extra token
        dtype = inference_dtype(cfg.runtime.precision, device)  # auto: fp32 (bf16 changed which tokens are outliers)
        detect = resolve_layer(cfg.detect_layer, len(getattr(model, "blocks")), "--detect-layer")  # noqa: B009
        transform = cfg.images.transform(model)
        ds = cfg.images.open(transform, seed=cfg.runtime.seed)
        loaded = list(cfg.images.loader(ds))  # decoded once: every pass below runs over these batches
        labels = [y for _, y in image_batches(loaded, cfg.images.batch_size)]  # the usable ones, in order
        return cls(cfg, model, dtype, detect, transform, len(ds), loaded, labels)

    def diagnosis(
        self,
        model: nn.Module,
        desc: str,
        observe: Observer,
        keep: Sequence[int] = (),
        resume: Sequence[Resume | None] | None = None,
    ) -> NormStream:
        """One diagnose pass as `vitreg diagnose --layer DETECT` runs it, also feeding ``observe``."""
        from vitreg.analysis.diagnose import diagnose_model

        return diagnose_model(
            model,
            self.loaded,
            self.transform.input_size,
            self.transform.denormalize,
            dtype=self.dtype,
            examples=self.cfg.examples,
            total=self.total,
            desc=desc,
            layer=self.detect,
            observe=observe,
            keep_inputs=keep,
            resume=resume,
        )

    def original(self) -> DonePass:
        """The original model, once: its diagnosis, the norms of blocks 0..detect and the sweep's "before" point."""
        from vitreg.analysis.register_neurons import block_norms
        from vitreg.analysis.ttr_sweep import SweepMeter
        from vitreg.jobs.diagnose import DonePass

        before = self.before = SweepMeter.of(self.model, self.detect, 0)

        def observe(i: int, _batch: dict[str, Any], cap: Capture) -> None:
            self.norms.append(block_norms(cap, self.detect + 1))
            before.add(cap, self.labels[i])

        return DonePass(self.diagnosis(self.model, "diagnose a", observe), self.transform)

    def search(self) -> NeuronSearch:
        import numpy as np

        from vitreg.analysis.register_neurons import find_register_neurons, image_batches

        c = self.cfg
        return find_register_neurons(
            self.model,
            image_batches(self.loaded, c.images.batch_size),
            detect_layer=self.detect,
            top_layer=c.top_layer,
            rule=c.rule.kind,
            value=c.rule.value,
            sparse=c.sparse,
            keep=max(256, c.max_top_k),
            dtype=self.dtype,
            norms=np.concatenate(self.norms),
        )

    def sweep(self, search: NeuronSearch) -> TopKSweep | None:
        """The top-k sweep (None: no neurons to move); each of its passes keeps its diagnosis."""
        from vitreg.analysis.register_neurons import image_batches
        from vitreg.analysis.ttr_sweep import sweep_top_k

        if not search.neurons:
            return None
        assert search.threshold is not None  # neurons are only found above a threshold
        assert self.before is not None  # the original's pass ran first
        c = self.cfg

        def run_pass(
            fixed: nn.Module, k: int, on_batch: OnBatch, keep: Sequence[int], resume: Sequence[Resume | None] | None
        ) -> None:
            observe: Observer = lambda i, _batch, cap: on_batch(i, cap, self.labels[i])
            self.passes[k] = self.diagnosis(fixed, f"top-k {k}", observe, keep, resume)

        return sweep_top_k(
            self.model,
            search,
            image_batches(self.loaded, c.images.batch_size),
            registers=c.registers,
            top_k=c.top_k,
            max_k=c.max_top_k,
            clear=c.clear,
            dtype=self.dtype,
            before=self.before.point(float(search.threshold), None),
            run_pass=run_pass,
        )

    def kept_pass(self, k: int) -> DonePass:
        """The chosen k's pass, as the fixed model's diagnosis (the others are dropped)."""
        from vitreg.jobs.diagnose import DonePass

        done = DonePass(self.passes[k], self.transform)
        self.passes.clear()
        return done


def _held_out(
    cfg: FixConfig, model: Any, neurons: NeuronsFile | None, detect: int, threshold: float, dtype: Any, out: Path
) -> HeldOut:
    """The chosen fix on ``cfg.held_out`` (images the neurons were not fitted on): one diagnose pass of the original
    (``a``) and of the fixed model (``b``) there, written as DIR/held_out/ (a diagnose run directory), which also
    give the outlier share above the fit's threshold and the fixed model's [CLS] cosine to the original's."""
    from vitreg.analysis.diagnose import diagnose_model
    from vitreg.analysis.register_neurons import image_batches
    from vitreg.analysis.ttr_sweep import SweepMeter, _fixed
    from vitreg.errors import DataError
    from vitreg.jobs.diagnose import DiagnoseConfig, DonePass, ModelEntry, diagnose

    assert cfg.held_out is not None
    transform = cfg.images.transform(model)  # prepared as the fit's images are
    ds = cfg.held_out.open(transform, seed=cfg.runtime.seed)
    loaded = list(cfg.held_out.loader(ds))
    labels = [y for _, y in image_batches(loaded, cfg.held_out.batch_size)]
    if not labels:
        raise DataError(f"--held-out {cfg.held_out.src}: no usable images")
    models = {"a": model}
    if neurons is not None:
        models["b"] = _fixed(model, neurons.selected, cfg.registers)
    meters = {k: SweepMeter.of(m, detect, cfg.registers if k == "b" else 0) for k, m in models.items()}
    done = {}
    for key, m in models.items():
        meter = meters[key]
        stream = diagnose_model(
            m,
            loaded,
            transform.input_size,
            transform.denormalize,
            dtype=dtype,
            examples=cfg.examples,
            total=len(ds),
            desc=f"held out {key}",
            layer=detect,
            observe=_feeding(meter, labels),
        )
        done[key] = DonePass(stream, transform)
    before, ref = meters["a"].point(threshold, None)
    spec = to_dict(cfg.model)
    entries = [ModelEntry(key="a", **spec)]
    after = None
    if neurons is not None:
        after, _ = meters["b"].point(threshold, ref)
        after.k = neurons.top_k
        entries.append(ModelEntry(key="b", **(spec | {"test_time_registers": str(out / NEURONS_FILE)})))
    metrics = diagnose(
        DiagnoseConfig(
            models=entries,
            images=cfg.held_out,
            runtime=cfg.runtime,
            examples=cfg.examples,
            layer=cfg.detect_layer,
            out=str(out / HELD_OUT),
        ),
        done=done,
    )
    return HeldOut(
        images=metrics.models[0].images, source=cfg.held_out.src, directory=HELD_OUT, before=before, after=after
    )


def _feeding(meter: Any, labels: list[Any]) -> Callable[[int, dict[str, Any], Any], None]:
    """The ``observe`` hook of a diagnose pass that adds batch ``i``'s capture (and labels) to ``meter``."""
    return lambda i, _batch, cap: meter.add(cap, labels[i])


def _diagnose(cfg: FixConfig, out: Path, fixed: bool, done: dict[str, Any] | None = None) -> Any:
    """The original (key a) and, when neurons were moved, the fixed model (key b), on the same images, analysed at
    the detection block; ``done``: their passes when the fix already ran them."""
    from vitreg.jobs.diagnose import DiagnoseConfig, ModelEntry, diagnose

    spec = to_dict(cfg.model)
    models = [ModelEntry(key="a", **spec)]
    if fixed:
        models.append(ModelEntry(key="b", **(spec | {"test_time_registers": str(out / NEURONS_FILE)})))
    return diagnose(
        DiagnoseConfig(
            models=models,
            images=cfg.images,
            runtime=cfg.runtime,
            examples=cfg.examples,
            layer=cfg.detect_layer,
            out=str(out),
        ),
        done=done,
    )


def layer_shares(out: Path, metrics: Any, after: str = "b") -> list[FixLayer]:
    """Per block: patch tokens above the original's (key a) auto threshold there, in the original and the model of
    key ``after``, from the diagnose run directory ``out``."""
    from vitreg.results.rundir import outlier_count, read_arrays

    a, b = read_arrays(out, "a"), read_arrays(out, after)
    edges = a["hist_edges"]
    by_key = {m.key: m for m in metrics.models}
    rows = []
    for la, lb in zip(by_key["a"].layers, by_key[after].layers, strict=True):
        i, thr = la.layer, la.auto_threshold
        ca, cb = a["hist_counts"][i], b["hist_counts"][i]
        rows.append(
            FixLayer(
                layer=i,
                threshold=thr,
                share_before=outlier_count(edges, ca, thr) / max(int(ca.sum()), 1),
                share_after=outlier_count(edges, cb, thr) / max(int(cb.sum()), 1),
                threshold_after=lb.auto_threshold,
            )
        )
    return rows


def _flops_overhead(model: Any, registers: int) -> float | None:
    from vitreg.flops import count

    cfg = getattr(model, "vitreg_config", None)
    if cfg is None:
        return None
    base = count(cfg, cfg.registers)
    fixed = count(replace(cfg, test_time_registers=registers, register_neurons=[]), cfg.registers)
    return fixed["flops"] / base["flops"] - 1.0


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def outcome(search: NeuronSearch, sweep: TopKSweep | None, registers: int) -> str:
    """One line: what the fix did (or why it did nothing)."""
    if sweep is None:
        return search.reason
    p, b = sweep.at(sweep.chosen), sweep.before
    what = "cleared" if sweep.cleared else f"not cleared: at most {_pct(sweep.clear)} of them were to remain"
    line = (
        f"moved {sweep.chosen} register neuron(s) into {registers} test-time register(s): outliers at block "
        f"{search.detect_layer} {_pct(b.outlier_share)} -> {_pct(p.outlier_share)} of patch tokens ({what})"
    )
    if p.cls_cosine is not None:
        line += f"; final [CLS] cosine to the original {p.cls_cosine:.3f}"
    if p.top1 is not None and b.top1 is not None:
        line += f"; top-1 {b.top1:.3f} -> {p.top1:.3f}"
    elif p.agreement is not None:
        line += f"; predictions unchanged on {_pct(p.agreement)} of the images"
    return line
