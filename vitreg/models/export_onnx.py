"""A model written out as an ONNX graph that onnxruntime runs, the fix inside: test-time registers (their MLP hooks
traced into the graph) or registers distilled into the model. Exported with torch's TorchScript exporter (opset 17),
the input ``pixel_values`` (B, 3, H, W) at the model's size, the output ``last_hidden_state`` (B, N, C): every
token after the final norm, [CLS] and registers first, as vitreg's forward gives them. The graph is then run by
onnxruntime and its tokens compared with the model's in fp32 (refused above 1e-4, times the output's largest value
where that exceeds 1, the file removed); ``like``: the interface of the graph the model was read from instead
(:mod:`vitreg.models.export_like`); ``int8``
quantises its linear layers dynamically (onnxruntime's ``quantize_dynamic``, as the zoo's released CLIP was
published) and reports the agreement, which depends on the CPU's int8 kernels and has no bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vitreg.errors import ConfigError
from vitreg.models.export_like import LikeSource, read_interface, run_graph

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


def _run(path: Path, x: np.ndarray, input_name: str = INPUT) -> list[np.ndarray]:
    return list(run_graph(path, x, input_name).values())


def export_onnx(model: nn.Module, out: Path, int8: bool = False, like: Path | None = None) -> dict[str, Any]:
    """Write ``model`` as ``out`` (.onnx); returns the fp32 difference to vitreg's forward and, with ``int8``, the
    quantised graph's file and its agreement (cosine and largest difference). ``like``: the ONNX graph the model was
    read from, whose input name and outputs the export takes (:mod:`vitreg.models.export_like`)."""
    from vitreg.models.presets import config_of

    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"--to onnx: the output is a .onnx file, got {out}")
    if out.exists():
        raise ConfigError(f"{out} exists: give a new file for the ONNX export")
    cfg = config_of(model)
    model = model.eval()
    module: nn.Module = _Tokens(model)
    input_name, output_names, axes = INPUT, [OUTPUT], {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}
    if like is not None:
        interface = read_interface(Path(like), model)
        module = LikeSource(model, interface).eval()
        input_name, output_names = interface.input, [o.name for o in interface.outputs]
        batch = interface.input_axes.get(0)
        axes = {input_name: interface.input_axes} | ({n: {0: batch} for n in output_names} if batch else {})
    out.parent.mkdir(parents=True, exist_ok=True)
    x = torch.randn(2, 3, *cfg.img_size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                (x,),
                str(out),
                input_names=[input_name],
                output_names=output_names,
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
            want = _as_list(module(x))
        got = _run(out, x.numpy(), input_name)
    except Exception as err:  # the exporter and onnxruntime raise many types for what they cannot express
        out.unlink(missing_ok=True)
        raise ConfigError(f"--to onnx: the graph could not be exported or run ({type(err).__name__}: {err})") from None
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
    # relative to each output's scale where it exceeds 1: the tokens before the final norm reach norms of hundreds
    # in a model with artifacts, where fp32 itself rounds at about 1e-5 of the value
    rel = max(float(np.abs(g - w).max() / max(1.0, np.abs(w).max())) for g, w in zip(got, want, strict=True))
    if not rel <= TOL:
        out.unlink(missing_ok=True)
        raise ConfigError(
            f"--to onnx: onnxruntime gives other tokens (largest difference {diff:.2e}, {rel:.1e} of scale)"
        )
    result: dict[str, Any] = {"file": str(out), "max_abs_diff": diff, "max_rel_diff": rel, "input": input_name,
                              "outputs": output_names}  # fmt: skip
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q = out.with_name(out.stem + ".int8.onnx")
        quantize_dynamic(str(out), str(q), weight_type=QuantType.QInt8, per_channel=True)
        got8, ref = _run(q, x.numpy(), input_name)[0], want[0]
        a, b = got8.reshape(-1, got8.shape[-1]), ref.reshape(-1, ref.shape[-1])
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        result |= {
            "int8_file": str(q),
            "int8_min_cosine": float(cos.min()),
            "int8_max_abs_diff": float(np.abs(got8 - ref).max()),
        }
    return result


def _as_list(out: torch.Tensor | tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
