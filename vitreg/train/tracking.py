"""What a run records while it trains: per-layer token norms on a fixed held-out batch, held-out top-1, and the
metrics file (JSON lines, one record per event, each with a ``kind`` and the ``step``) plus optional TensorBoard.

Norms are the block outputs before the final norm (the paper's Fig. 4b quantity), from the Inspector; outliers
are counted under the diagnose ``auto`` rule (:func:`vitreg.analysis.norms.find_threshold`) applied per layer.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vitreg import atomic
from vitreg.analysis.norms import find_threshold
from vitreg.device import autocast
from vitreg.errors import OutputError
from vitreg.models.inspect import Inspector

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter  # optional (tensorboard): imported when it is used

QUANTILES = {"p50": 50, "p90": 90, "p98": 98, "p99": 99}


def _q(v: np.ndarray) -> dict[str, float]:
    out = {k: float(np.percentile(v, q)) for k, q in QUANTILES.items()}
    out["max"] = float(v.max())
    return out


@torch.no_grad()
def track_norms(model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype | None) -> dict[str, Any]:
    """Per-layer patch-norm quantiles and outlier ratio, [CLS] and register norms, for ``images`` (B, 3, H, W)."""
    was_training = model.training
    model.eval()
    try:
        cap = Inspector(model, dtype=dtype).run(images, layers="all", attention_layers=None, normed=False)
    finally:
        model.train(was_training)
    layers = []
    for i in range(len(cap.tokens)):
        s = cap.split_tokens(i)
        norms = s.patches.float().norm(dim=-1).cpu().numpy()  # (B, H, W)
        th = find_threshold(norms, rule="auto")
        row: dict[str, Any] = {"layer": i, **_q(norms)}
        row["threshold"] = th.threshold
        row["bimodal"] = th.bimodal
        row["outlier_ratio"] = 0.0 if th.threshold is None else float((norms > th.threshold).mean())
        row["cls_norm"] = float(s.cls.float().norm(dim=-1).mean()) if s.cls is not None else None
        # (B, R, C) -> mean norm per register (R,)
        row["register_norms"] = s.registers.float().norm(dim=-1).mean(0).tolist()
        layers.append(row)
    return {"images": int(images.shape[0]), "rule": "auto", "layers": layers}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    prepare,
    device: torch.device,
    dtype: torch.dtype | None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy on held-out uint8 ``images`` (M, H, W, 3)."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    try:
        for start in range(0, len(labels), batch_size):
            x = prepare(images[start : start + batch_size]).to(device)
            y = labels[start : start + batch_size].to(device)
            with autocast(device, dtype):
                logits = model(x)
            logits = logits.float()
            correct += int((logits.argmax(-1) == y).sum())
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
    finally:
        model.train(was_training)
    n = max(1, len(labels))
    return {"top1": correct / n, "ce": loss_sum / n, "images": len(labels)}


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as strings so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _clean(value.item())
    return value


def _scalars(tb: SummaryWriter, record: dict[str, Any]) -> None:
    """The record's numbers as TensorBoard scalars (each layer's norm quantiles under norms/layerN/)."""
    step, kind = record.get("step", 0), record.get("kind", "misc")
    for k, v in record.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
            tb.add_scalar(f"{kind}/{k}", v, step)
    for row in record.get("layers", []):
        for k in ("p50", "p99", "max", "outlier_ratio"):
            tb.add_scalar(f"norms/layer{row['layer']}/{k}", row[k], step)


class MetricsWriter:
    """Appends JSON lines to ``DIR/metrics.jsonl`` (one ``os.write`` per record, unbuffered, so a killed run loses at
    most one line); mirrors scalars to TensorBoard when it is installed. A no-op on ranks other than 0.

    A write that fails (disk full, I/O error) raises :class:`~vitreg.errors.OutputError` naming the file: the run
    stops there, its last checkpoint intact, and ``--resume`` rewrites the file from the records that checkpoint
    covers (a line cut short by the fault is dropped then).
    """

    def __init__(self, directory: Path, enabled: bool = True, tensorboard: bool = True):
        self.path = directory / "metrics.jsonl"
        self.enabled = enabled
        self._fd: int | None = None
        self._tb: SummaryWriter | None = None
        if not enabled:
            return
        atomic.make_dirs(directory)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from err
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(directory / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled or self._fd is None:
            return
        data = (json.dumps(_clean(record)) + "\n").encode("utf-8")
        try:
            while data:  # os.write may write less than asked (a signal, a nearly full disk)
                data = data[os.write(self._fd, data) :]
        except OSError as err:
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from err
        if self._tb is not None:
            _scalars(self._tb, record)

    def close(self, quiet: bool = False) -> None:
        """Make the records durable and close the file; ``quiet`` (a run already failing) never raises."""
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as err:
            if not quiet:
                raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from err
        finally:
            if self._tb is not None:
                self._tb.close()
                self._tb = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics file; a last line cut short by a crash is ignored."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only records up to ``step`` (resuming from a checkpoint at ``step`` replays what came after)."""
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= step]
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
