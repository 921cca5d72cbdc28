"""A model written out as an ONNX graph that onnxruntime runs, the fix inside: test-time registers (their MLP hooks
traced into the graph) or registers distilled into the model. Exported with torch's TorchScript exporter (opset 17),
the input ``pixel_values`` (B, 3, H, W) at the model's size, the output ``last_hidden_state`` (B, N, C): every
token after the final norm, [CLS] and registers first, as vitreg's forward gives them. The graph is then run by
onnxruntime and its tokens compared with the model's in fp32 (refused above 1e-4, the file removed); ``int8``
quantises its linear layers dynamically (onnxruntime's ``quantize_dynamic``, as the zoo's released CLIP was
published) and reports the agreement, which depends on the CPU's int8 kernels and has no bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vitreg.errors import ConfigError

TOL = 1e-4
OPSET = 17
INPUT, OUTPUT = "pixel_values", "last_hidden_state"


class _Tokens(nn.Module):
    """The model's final normed tokens as the graph's one output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)  # type: ignore[operator]


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT], {INPUT: x})[0])


def export_onnx(model: nn.Module, out: Path, int8: bool = False) -> dict[str, Any]:
    """Write ``model`` as ``out`` (.onnx); returns the fp32 difference to vitreg's forward and, with ``int8``, the
    quantised graph's file and its agreement (cosine and largest difference)."""
    from vitreg.models.presets import config_of

    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"--to onnx: the output is a .onnx file, got {out}")
    if out.exists():
        raise ConfigError(f"{out} exists: give a new file for the ONNX export")
    cfg = config_of(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = torch.randn(2, 3, *cfg.img_size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            torch.onnx.export(
                _Tokens(model),
                (x,),
                str(out),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
            want = model.forward_features(x).numpy()  # type: ignore[operator]
        got = _run(out, x.numpy())
    except Exception as err:  # the exporter and onnxruntime raise many types for what they cannot express
        out.unlink(missing_ok=True)
        raise ConfigError(f"--to onnx: the graph could not be exported or run ({type(err).__name__}: {err})") from None
    diff = float(np.abs(got - want).max())
    if not diff <= TOL:
        out.unlink(missing_ok=True)
        raise ConfigError(f"--to onnx: onnxruntime gives other tokens (largest difference {diff:.2e} > {TOL})")
    result: dict[str, Any] = {"file": str(out), "max_abs_diff": diff}
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q = out.with_name(out.stem + ".int8.onnx")
        quantize_dynamic(str(out), str(q), weight_type=QuantType.QInt8, per_channel=True)
        got8 = _run(q, x.numpy())
        a, b = got8.reshape(-1, got8.shape[-1]), want.reshape(-1, want.shape[-1])
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        result |= {
            "int8_file": str(q),
            "int8_min_cosine": float(cos.min()),
            "int8_max_abs_diff": float(np.abs(got8 - want).max()),
        }
    return result
