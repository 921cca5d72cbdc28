"""What `vitreg export` writes beside the exported model: ``export.json`` (an :class:`ExportResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from vitreg.results.codec import SCHEMA_VERSION


@dataclass(kw_only=True)
class ExportResult:
    RESULT_FILE: ClassVar[str] = "export.json"  # beside the exported folder or file

    schema_version: int = SCHEMA_VERSION
    command: Literal["export"] = "export"
    model: str
    to: str  # timm | onnx
    path: str  # the timm folder or the .onnx file
    architecture: str | None = None  # timm's entry point (timm)
    max_abs_diff: float  # the exported model's tokens vs vitreg's forward, fp32
    max_rel_diff: float | None = None  # onnx: the same over each output's largest value where that exceeds 1
    input: str | None = None  # onnx: the graph's input name
    outputs: list[str] = field(default_factory=list)  # onnx: its outputs, in order
    like: str | None = None  # onnx: the source graph whose interface it keeps
    int8_path: str | None = None
    int8_min_cosine: float | None = None
    int8_max_abs_diff: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
