"""Diagnose: does a model have high-norm artifact tokens, where, and how strong? (`vitreg diagnose`)

One streaming pass per model over the images (memory independent of their number); under torchrun the images are
sharded over ranks (``range(rank, n, world)``, no padding) and the statistics added, so the run directory is the
same as with one process. Writes DIR/metrics.json, DIR/arrays_<key>.npz and DIR/config.yaml; the report is drawn
from them by :func:`vitreg.report.html.write_report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg._version import __version__
from vitreg.analysis.outlier_rule import NORM_RULES, OutlierRule
from vitreg.config import to_dict, validate_all
from vitreg.errors import ConfigError, DataError
from vitreg.jobs.specs import ImageSpec, ModelSpec, Runtime
from vitreg.results.diagnose import DiagnoseResult, DiagnoseSummary, ModelResult

if TYPE_CHECKING:
    from vitreg.analysis.stream import NormStream

MAX_EXAMPLES = 16  # pictures kept per model (all of them are drawn in the report)


@dataclass(kw_only=True)
class ModelEntry(ModelSpec):
    key: str  # "a", "b" (a comparison) or "s0", "s1", ... (a sweep along training or size)


@dataclass(kw_only=True)
class DiagnoseConfig:
    """Everything `vitreg diagnose` does (saved in metrics.json and config.yaml)."""

    models: list[ModelEntry]
    images: ImageSpec = field(default_factory=ImageSpec)
    runtime: Runtime = field(default_factory=Runtime)
    # on the output patch-token norms; paper: cutoff 150 for DINOv2; reproducibility study: percentile 98
    rule: OutlierRule = field(default_factory=OutlierRule)
    examples: int = 8
    sinks: bool = False  # attention-sink statistics of every block (attention of all queries: slower)
    # the block whose output tokens the output-level analyses use (rule, positions, neighbours, background, pictures);
    # negative counts from the end: -1 the last block (the paper's output norms), -2 the one LLaVA reads
    layer: int = -1
    log_x: bool = False  # report option: log-scaled norm axis first
    out: str

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("give --model SPEC (and optionally --compare SPEC2) or --sweep ENTRY [ENTRY ...]")
        keys = [m.key for m in self.models]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"model keys must be unique, got {keys}")
        self.rule.validate(NORM_RULES)
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise ConfigError(f"--layer takes a block index (negative counts from the end), got {self.layer!r}")
        if not 0 <= self.examples <= MAX_EXAMPLES:
            raise ConfigError(
                f"--examples must be in 0..{MAX_EXAMPLES} (all are drawn in the report), got {self.examples}"
            )

    @staticmethod
    def upgrade_keys(data: dict[str, Any]) -> dict[str, Any]:
        """Configs saved before :class:`OutlierRule` spelled the rule ``rule: cutoff`` with ``cutoff: 150`` (or
        ``percentile: 98``) beside it: read as ``rule: {kind: cutoff, value: 150}`` (vitreg.config calls this)."""
        return OutlierRule.upgrade(data, ("cutoff", "percentile"))


def check_config(cfg: DiagnoseConfig, skip: Any = ()) -> None:
    """Every value, and every model's name, file and weights, checked before anything is read or written (``skip``:
    keys of entries whose pass the caller already ran, so their model loaded)."""
    validate_all(cfg)
    for entry in cfg.models:
        if entry.key not in skip:
            entry.check()


@dataclass
class DonePass:
    """The diagnose pass of one entry, already run by the caller over ``cfg.images`` with the config's options (e.g.
    by `vitreg fix`, which runs these models over the same images anyway): the job summarises it as its own."""

    stream: NormStream  # unmerged, as :func:`vitreg.analysis.diagnose.diagnose_model` returns it
    transform: Any  # the ImageTransform the images went through (its size and description go into metrics.json)


def diagnose(cfg: DiagnoseConfig, done: dict[str, DonePass] | None = None) -> DiagnoseResult:
    """Run the diagnosis of every model of ``cfg`` and write its run directory; returns what metrics.json holds.
    ``done``: passes already run, by entry key (those models are not loaded or run again).

    Every model is checked (names, files, weights) before any image is read, so a bad second model fails at once.
    A ``--layer`` beyond a model's depth fails as soon as that model is loaded, before its pass.
    """
    from vitreg.runlock import run_lock

    check_config(cfg, skip=done or {})
    with run_lock(cfg.out, "diagnose"):  # a second diagnose on the same --out refuses, naming this one
        return _run(cfg, done or {})


def _run(cfg: DiagnoseConfig, done: dict[str, DonePass]) -> DiagnoseResult:
    from vitreg import distributed as dist
    from vitreg.config import save_config
    from vitreg.device import inference_dtype
    from vitreg.results.rundir import write_arrays, write_result

    device, _ = cfg.runtime.start()
    dtype = inference_dtype(cfg.runtime.precision, device)  # auto: fp32 (bf16 changed which tokens are outliers)
    dist.init_distributed(device)
    out = Path(cfg.out)
    try:
        results = []
        for entry in cfg.models:
            if entry.key in done:
                result, arrays = _summarize(entry, cfg, done[entry.key], dtype)
            else:
                result, arrays = _diagnose_entry(entry, cfg, device, dtype)
            if dist.is_main():
                write_arrays(out, entry.key, arrays)
            results.append(result)
        dist.barrier()
        config = to_dict(cfg) | {"world_size": dist.get_world_size(), "resolved_device": str(device)}
        metrics = DiagnoseResult(
            vitreg_version=__version__, config=config, summary=DiagnoseSummary.of(results[0]), models=results
        )
        if dist.is_main():
            write_result(out, metrics)
            save_config(cfg, out)
        return metrics
    finally:
        dist.cleanup()


def _shard(ds: Any, rank: int, world: int) -> Any:
    """Images ``rank, rank + world, ...``: every image exactly once (a DistributedSampler would pad by repeating)."""
    from torch.utils.data import Subset

    return ds if world == 1 else Subset(ds, list(range(rank, len(ds), world)))


def _diagnose_entry(entry: ModelEntry, cfg: DiagnoseConfig, device: Any, dtype: Any) -> tuple[ModelResult, dict]:
    import torch

    from vitreg import distributed as dist
    from vitreg.analysis.diagnose import diagnose_model, resolve_layer
    from vitreg.models.inspect import no_cls_notes

    torch.manual_seed(cfg.runtime.seed)  # random-init models are the same whatever their place in the list
    model = entry.load(device)
    layer = resolve_layer(cfg.layer, len(getattr(model, "blocks")))  # noqa: B009 - ConfigError naming --layer
    # a fixed input size gives a fixed patch grid, so per-position counts add over images
    transform = cfg.images.transform(model)
    ds = cfg.images.open(transform, seed=cfg.runtime.seed)
    shard = _shard(ds, dist.get_rank(), dist.get_world_size())
    stream = diagnose_model(
        model,
        cfg.images.loader(shard),
        transform.input_size,
        transform.denormalize,
        dtype=dtype,
        examples=cfg.examples,
        cutoff=cfg.rule.cutoff,
        total=len(shard),
        progress=dist.is_main(),
        desc=f"diagnose {entry.key}",
        sinks=cfg.sinks,
        layer=layer,
    )
    result, arrays = _summarize(entry, cfg, DonePass(stream, transform), dtype)
    result.notes = no_cls_notes(model, "diagnose")
    return result, arrays


def _summarize(entry: ModelEntry, cfg: DiagnoseConfig, done: DonePass, dtype: Any) -> tuple[ModelResult, dict]:
    from vitreg.analysis.summary import summarize

    stream = done.stream
    stream.merge_ranks()
    if stream.images == 0:
        raise DataError(f"model {entry.label}: no usable images in {cfg.images.src!r} (every image was bad or none)")
    result, arrays = summarize(stream, cfg.rule, entry.key, entry.label, entry.spec)
    result.input_size = list(done.transform.input_size)
    result.preprocessing = done.transform.describe()
    result.precision = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    return result, arrays
