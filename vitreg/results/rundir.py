"""The one module that writes and reads run-directory results (docs/run-directory.md lists every file).

Each result type names its one file (``RESULT_FILE``, beside its fields); ``write_result`` writes it atomically with
the current ``schema_version``, ``read_result`` reads it back into the typed dataclass (RunDirError naming the file
and key when it does not fit). Diagnose runs add one ``arrays_<key>.npz`` per model, read without pickle and checked
against the contract.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

import numpy as np

from vitreg import atomic
from vitreg.errors import RunDirError
from vitreg.results.codec import check_schema, from_json, read_json, to_json  # read_json: also this module's API
from vitreg.results.diagnose import DiagnoseResult, ModelResult


class StoredResult(Protocol):
    """A result dataclass names its own file, beside its fields: ``RESULT_FILE: ClassVar[str] = "probe.json"``."""

    RESULT_FILE: ClassVar[str]


R = TypeVar("R", bound=StoredResult)

LOST_EXAMPLES = "figures/lost_examples.npz"
# Arrays every diagnose model must carry; the rest are optional and their figures are skipped when absent.
REQUIRED_ARRAYS = ("hist_edges", "hist_counts")


def result_path(run_dir: str | Path, cls: type[StoredResult]) -> Path:
    return Path(run_dir) / cls.RESULT_FILE


def write_result(run_dir: str | Path, result: StoredResult) -> Path:
    """Write ``result`` to its file in ``run_dir`` (atomically; the directory is created)."""
    return atomic.write_json(result_path(run_dir, type(result)), to_json(result))


def has_result(run_dir: str | Path, cls: type[StoredResult]) -> bool:
    return result_path(run_dir, cls).is_file()


def read_result(run_dir: str | Path, cls: type[R]) -> R:
    """The ``cls`` result of ``run_dir``; RunDirError naming the file and key when it is missing or does not fit."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory not found: {run_dir}")
    path = result_path(run_dir, cls)
    if not path.is_file():
        raise RunDirError(f"{path} not found: {run_dir} holds no {cls.__name__} ({cls.RESULT_FILE})")
    data = read_json(path)
    check_schema(data, path)
    expected = _command_of(cls)
    if expected and isinstance(data, dict) and data.get("command", expected) != expected:
        raise RunDirError(f"{path} is not a {expected} result (its 'command' is {data.get('command')!r})")
    return from_json(cls, data, path)


def _command_of(cls: type) -> str | None:
    """The ``command`` a result file of ``cls`` names (its field's default), if it has one."""
    f = getattr(cls, "__dataclass_fields__", {}).get("command")
    return f.default if f is not None and isinstance(f.default, str) else None


# ------------------------------------------------------------------------------------------------ diagnose arrays
def arrays_path(run_dir: str | Path, key: str) -> Path:
    return Path(run_dir) / f"arrays_{key}.npz"


def write_arrays(run_dir: str | Path, key: str, arrays: Mapping[str, np.ndarray]) -> Path:
    return atomic.write_npz(arrays_path(run_dir, key), arrays)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a plain ``.npz`` (``allow_pickle=False``: a run directory may come from elsewhere)."""
    if not path.is_file():
        raise RunDirError(f"{path} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise RunDirError(f"{path} cannot be read as a plain .npz (no pickled objects allowed): {err}") from err


def read_arrays(run_dir: str | Path, key: str) -> dict[str, np.ndarray]:
    """The arrays of model ``key``, checked against the contract (shapes of the histograms and maps)."""
    path = arrays_path(run_dir, key)
    if not path.is_file():
        raise RunDirError(f"{path} not found (metrics.json lists this model)")
    arrays = read_npz(path)
    missing = [k for k in REQUIRED_ARRAYS if k not in arrays]
    if missing:
        raise RunDirError(f"{path} lacks {', '.join(missing)}")
    edges, counts = arrays["hist_edges"], arrays["hist_counts"]
    if edges.ndim != 1 or len(edges) < 2 or not np.all(np.diff(edges) > 0):
        raise RunDirError(f"{path}: hist_edges must be a 1-D increasing array of at least 2 edges")
    if counts.ndim == 1:
        counts = arrays["hist_counts"] = counts[None]
    bins = len(edges) - 1
    if counts.ndim != 2 or counts.shape[1] != bins:
        raise RunDirError(f"{path}: hist_counts has shape {counts.shape}, expected (layers, {bins})")
    if "cls_hist" in arrays and arrays["cls_hist"].shape != (bins,):
        raise RunDirError(f"{path}: cls_hist has shape {arrays['cls_hist'].shape}, expected ({bins},)")
    if "reg_hist" in arrays and (arrays["reg_hist"].ndim != 2 or arrays["reg_hist"].shape[1] != bins):
        raise RunDirError(f"{path}: reg_hist has shape {arrays['reg_hist'].shape}, expected (R, {bins})")
    pos = arrays.get("position_counts")
    if pos is not None and arrays.get("position_totals", pos).shape != pos.shape:
        raise RunDirError(f"{path}: position_counts and position_totals differ in shape")
    return arrays


@dataclass
class ModelRun:
    """One model of a diagnose run: its result from metrics.json and its arrays."""

    key: str
    result: ModelResult
    arrays: dict[str, np.ndarray] = field(repr=False)
    label: str = ""  # set by load_run: the result's label, made unique within the run

    @property
    def threshold(self) -> float | None:
        return self.result.rule.threshold

    @property
    def num_registers(self) -> int:
        if "reg_hist" in self.arrays:
            return int(self.arrays["reg_hist"].shape[0])
        return self.result.registers

    @property
    def query_names(self) -> list[str]:
        if "query_names" in self.arrays:
            return [str(q) for q in self.arrays["query_names"]]
        return ["cls"] + [f"reg{i}" for i in range(self.num_registers)]

    def has(self, *names: str) -> bool:
        return all(n in self.arrays for n in names)

    def output_counts(self) -> np.ndarray:
        """(E,) patch-token norm counts of the analysed block's output (the last one by default: the paper's output
        norms; ``vitreg diagnose --layer L``: block L)."""
        return self.arrays["hist_counts"][self.result.output_layer]


@dataclass
class DiagnoseRun:
    run_dir: Path
    metrics: DiagnoseResult
    models: list[ModelRun]

    @property
    def is_sweep(self) -> bool:
        return self.metrics.is_sweep


def is_diagnose_run(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a diagnose metrics.json (other commands write their own files)."""
    path = result_path(run_dir, DiagnoseResult)
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return True  # claim it so load_run reports what is wrong instead of the section silently vanishing
    return not isinstance(data, dict) or data.get("command", "diagnose") == "diagnose"


def load_run(run_dir: str | Path) -> DiagnoseRun:
    """A diagnose run directory: metrics.json and every model's arrays."""
    run_dir = Path(run_dir)
    metrics = read_result(run_dir, DiagnoseResult)
    if not metrics.models:
        raise RunDirError(f"{result_path(run_dir, DiagnoseResult)} has an empty 'models' list")
    models = [ModelRun(m.key, m, read_arrays(run_dir, m.key)) for m in metrics.models]
    base = [m.result.label or m.result.spec or m.key for m in models]
    for m, b in zip(models, base, strict=True):
        # two entries of one spec (e.g. 0 vs 4 registers) would otherwise share a legend name
        m.label = b if base.count(b) == 1 else f"{b} [{m.key}: {m.num_registers} reg]"
    return DiagnoseRun(run_dir=run_dir, metrics=metrics, models=models)


def outlier_count(edges: np.ndarray, counts: np.ndarray, threshold: float | None) -> int:
    """Tokens counted in bins whose lower edge is >= ``threshold`` (None: no outliers).

    The explorer's slider moves over bin edges, so this count is exact for every slider position.
    """
    if threshold is None:
        return 0
    return int(counts[edges[:-1] >= threshold].sum())
