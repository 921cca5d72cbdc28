"""Export a model where its users run it (`vitreg export`): a timm folder that timm loads alone, or an ONNX graph
that onnxruntime runs (optionally int8), each checked against vitreg's own forward before it is kept."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitreg.config import to_dict, validate_all
from vitreg.errors import ConfigError
from vitreg.jobs.specs import ModelSpec
from vitreg.results.export import ExportResult

TARGETS = ("timm", "onnx")


@dataclass(kw_only=True)
class ExportConfig:
    model: ModelSpec  # test-time registers (``test_time_registers``) are part of the model exported
    to: str = "timm"
    int8: bool = False  # onnx: also a dynamically quantised graph (FILE.int8.onnx)
    like: str | None = None  # onnx: the source graph whose input name and outputs the export keeps (a drop-in)
    out: str  # timm: a new folder; onnx: a .onnx file

    def validate(self) -> None:
        if self.to not in TARGETS:
            raise ConfigError(f"--to {self.to!r}: choose one of {', '.join(TARGETS)}")
        if self.int8 and self.to != "onnx":
            raise ConfigError("--int8 goes with --to onnx (a timm folder keeps the model's own precision)")
        if self.like is not None and self.to != "onnx":
            raise ConfigError("--like goes with --to onnx (a timm folder has timm's interface)")


def export(cfg: ExportConfig) -> ExportResult:
    """Write the export of ``cfg.model`` to ``cfg.out`` and ``export.json`` beside it; returns what that holds."""
    from vitreg import atomic
    from vitreg.results.codec import to_json

    validate_all(cfg)
    model = cfg.model.load("cpu")
    out = Path(cfg.out)
    if cfg.to == "timm":
        from vitreg.models.export_timm import export_timm

        name, diff = export_timm(model, out)
        result = ExportResult(
            model=cfg.model.label, to="timm", path=str(out), architecture=name, max_abs_diff=diff, config=to_dict(cfg)
        )
        atomic.write_json(out / ExportResult.RESULT_FILE, to_json(result))
        return result
    from vitreg.models.export_onnx import export_onnx

    found = export_onnx(model, out, int8=cfg.int8, like=Path(cfg.like) if cfg.like else None)
    result = ExportResult(
        model=cfg.model.label,
        to="onnx",
        path=str(out),
        max_abs_diff=found["max_abs_diff"],
        max_rel_diff=found["max_rel_diff"],
        input=found["input"],
        outputs=found["outputs"],
        like=cfg.like,
        int8_path=found.get("int8_file"),
        int8_min_cosine=found.get("int8_min_cosine"),
        int8_max_abs_diff=found.get("int8_max_abs_diff"),
        config=to_dict(cfg),
    )
    atomic.write_json(out.with_name(out.stem + ".export.json"), to_json(result))
    return result
