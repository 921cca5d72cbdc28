"""What the ONNX tests share: exporting a transformers vision tower as users do (torch's TorchScript exporter, which
keeps module paths in node names), running a graph with onnxruntime (the reference), and the rule every refused
graph follows (one line, naming the file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vitreg.errors import CheckpointError
from vitreg.models import load_model


def export(model: torch.nn.Module, path: Path, size: int = 32, dynamic: dict[int, str] | None = None) -> None:
    """``model`` (taking ``pixel_values``) to ``path`` at opset 17, its batch axis dynamic unless ``dynamic`` (axis
    -> name) says which axes are."""
    axes = {"pixel_values": dynamic or {0: "batch"}}
    torch.onnx.export(model, (torch.randn(2, 3, size, size),), str(path), input_names=["pixel_values"], dynamo=False,
                      opset_version=17, dynamic_axes=axes)  # fmt: skip


def ort_outputs(path: Path, x: torch.Tensor) -> list[Any]:
    """Every output of the graph at ``path`` run by onnxruntime on ``x`` (B, 3, H, W)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(sess.run(None, {"pixel_values": x.numpy()}))


def ort_hidden(path: Path, x: torch.Tensor) -> torch.Tensor:
    """onnxruntime's last_hidden_state: the graph's first (B, N, C) output."""
    return torch.from_numpy(np.asarray(next(o for o in ort_outputs(path, x) if o.ndim == 3)))


def refused(path: Path) -> str:
    """The message with which vitreg refuses the file at ``path``: one line naming it."""
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "\n" not in msg
    return msg
