"""Read a diagnose run directory (metrics.json + arrays_<key>.npz) and check it against the contract.

Figures and the page are drawn from these saved files only, never from a model. A malformed directory gives a
``RunDirError`` naming the file and what is wrong; a missing one gives ``FileNotFoundError``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Arrays every model must carry; the rest are optional and their figures are skipped when absent.
REQUIRED_ARRAYS = ("hist_edges", "hist_counts")


class RunDirError(ValueError):
    """A run directory whose files do not follow the diagnose contract."""


@dataclass
class ModelRun:
    """One model of a diagnose run: its ModelResult dict from metrics.json and its arrays."""

    key: str
    result: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)
    label: str = ""  # set by load_run: the result's label, made unique within the run

    def base_label(self) -> str:
        return str(self.result.get("label") or self.result.get("spec") or self.key)

    @property
    def threshold(self) -> float | None:
        t = (self.result.get("rule") or {}).get("threshold")
        return None if t is None else float(t)

    @property
    def num_registers(self) -> int:
        if "reg_hist" in self.arrays:
            return int(self.arrays["reg_hist"].shape[0])
        count = self.result.get("registers")
        return count if isinstance(count, int) else 0

    @property
    def register_analysis(self) -> dict[str, Any]:
        """The register-map block: "register_analysis" ("registers" holds the count), or a dict under "registers"."""
        block = self.result.get("register_analysis")
        if not isinstance(block, dict):
            block = self.result.get("registers")
        return block if isinstance(block, dict) else {}

    @property
    def query_names(self) -> list[str]:
        if "query_names" in self.arrays:
            return [str(q) for q in self.arrays["query_names"]]
        return ["cls"] + [f"reg{i}" for i in range(self.num_registers)]

    def has(self, *names: str) -> bool:
        return all(n in self.arrays for n in names)

    def output_counts(self) -> np.ndarray:
        """(E,) patch-token norm counts of the last block's output (the paper's output norms)."""
        return self.arrays["hist_counts"][-1]


@dataclass
class DiagnoseRun:
    run_dir: Path
    metrics: dict[str, Any]
    models: list[ModelRun]

    @property
    def is_sweep(self) -> bool:
        """Keys s0, s1, ... mark a list of checkpoints or model sizes (Fig. 4b, 4c) rather than a comparison."""
        return len(self.models) > 1 and all(m.key.startswith("s") for m in self.models)


def is_diagnose_run(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a diagnose metrics.json (other commands write their own files)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("command") == "diagnose"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return True  # claim it so load_run reports what is wrong instead of the section silently vanishing


def load_run(run_dir: Path) -> DiagnoseRun:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a diagnose run directory (run `vitreg diagnose --out DIR`)")
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(metrics, dict) or metrics.get("command") != "diagnose":
        raise RunDirError(f"{path} is not a diagnose result (its 'command' is not 'diagnose')")
    results = metrics.get("models")
    if not isinstance(results, list) or not results:
        raise RunDirError(f"{path} has no 'models' list")
    models = []
    for i, result in enumerate(results):
        if not isinstance(result, dict) or not isinstance(result.get("key"), str):
            raise RunDirError(f"{path}: models[{i}] has no string 'key'")
        key = result["key"]
        models.append(ModelRun(key=key, result=result, arrays=_load_arrays(run_dir / f"arrays_{key}.npz")))
    base = [m.base_label() for m in models]
    for m, b in zip(models, base, strict=True):
        # two entries of one spec (e.g. 0 vs 4 registers) would otherwise share a legend name
        m.label = b if base.count(b) == 1 else f"{b} [{m.key}: {m.num_registers} reg]"
    return DiagnoseRun(run_dir=run_dir, metrics=metrics, models=models)


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (metrics.json lists this model)")
    try:
        # allow_pickle=False: a run directory may come from elsewhere; object arrays would execute pickle code
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise RunDirError(f"{path} cannot be read as a plain .npz (no pickled objects allowed): {err}") from err
    missing = [k for k in REQUIRED_ARRAYS if k not in arrays]
    if missing:
        raise RunDirError(f"{path} lacks {', '.join(missing)}")
    edges, counts = arrays["hist_edges"], arrays["hist_counts"]
    if edges.ndim != 1 or len(edges) < 2 or not np.all(np.diff(edges) > 0):
        raise RunDirError(f"{path}: hist_edges must be a 1-D increasing array of at least 2 edges")
    if counts.ndim == 1:
        counts = arrays["hist_counts"] = counts[None]
    if counts.ndim != 2 or counts.shape[1] != len(edges) - 1:
        raise RunDirError(f"{path}: hist_counts has shape {counts.shape}, expected (layers, {len(edges) - 1})")
    for k in ("cls_hist",):
        if k in arrays and arrays[k].shape != (len(edges) - 1,):
            raise RunDirError(f"{path}: {k} has shape {arrays[k].shape}, expected ({len(edges) - 1},)")
    if "reg_hist" in arrays and (arrays["reg_hist"].ndim != 2 or arrays["reg_hist"].shape[1] != len(edges) - 1):
        raise RunDirError(f"{path}: reg_hist has shape {arrays['reg_hist'].shape}, expected (R, {len(edges) - 1})")
    if (
        "position_counts" in arrays
        and arrays.get("position_totals", arrays["position_counts"]).shape != arrays["position_counts"].shape
    ):
        raise RunDirError(f"{path}: position_counts and position_totals differ in shape")
    return arrays


def outlier_count(edges: np.ndarray, counts: np.ndarray, threshold: float | None) -> int:
    """Tokens counted in bins whose lower edge is >= ``threshold`` (None: no outliers).

    The explorer's slider moves over bin edges, so this count is exact for every slider position.
    """
    if threshold is None:
        return 0
    return int(counts[edges[:-1] >= threshold].sum())
