"""A fixed model exported with the interface of the ONNX graph it came from (``vitreg export --to onnx --like
SOURCE.onnx``), so that an application that runs the source graph runs its fixed self unchanged: the same input name
and layout, the same outputs in the same order and shapes.

What a source output can be (a transformers CLIP vision tower exported to ONNX, as ``CLIPVisionModelWithProjection``
is by an application: its first output ``image_embeds``):

- ``hidden`` (B, N, C): the tokens before the final norm (transformers' ``last_hidden_state``), [CLS] and the
  patches; a fixed model's registers (distilled or test-time) are left out, so N stays the source's;
- ``normed`` (B, N, C): the same after the final norm (the output is a LayerNormalization's);
- ``embeds`` (B, D): the final norm of [CLS] times a projection (``visual_projection``), whose weight is read from the
  source graph (int8 dequantised as the weights are), since vitreg's model is the image tower without it;
- ``pooled`` (B, C): the final norm of [CLS] (``pooler_output``).

Anything else is refused in one line naming the output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vitreg.errors import ConfigError

# ops an output may pass through after the projection's MatMul (onnxruntime's int8 rescaling, casts, reshapes)
_PASS = {"Cast", "Mul", "Add", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}


@dataclass(frozen=True)
class Output:
    name: str
    kind: str  # hidden | normed | embeds | pooled
    shape: tuple[int | str, ...]  # as the source states it (a str: a named dynamic axis)


@dataclass(frozen=True)
class Interface:
    """A source graph's input (name, its dynamic axes) and outputs, and the projection of its ``embeds`` output."""

    source: Path
    input: str
    input_axes: dict[int, str]
    outputs: list[Output]
    projection: np.ndarray | None  # (D, C)


def _dims(value: Any) -> tuple[int | str, ...]:
    return tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)


def _projection(g: Any, name: str, width: int) -> np.ndarray | None:
    """The (D, C) weight of the MatMul that produces output ``name`` (through rescaling and casts), None when the
    output comes from no MatMul; CheckpointError when it is one whose weight is no constant."""
    from vitreg.models.load.formats.onnx_graph import node_weight

    for _ in range(12):
        node = g.producer.get(name)
        if node is None:
            return None
        if node.op_type in ("MatMul", "MatMulInteger", "Gemm"):
            weight, _ = node_weight(g, node, f"the projection of {name}")
            return weight if weight.shape[1] == width else None
        if node.op_type not in _PASS:
            return None
        name = node.input[0]
    return None


def run_graph(path: Path, x: np.ndarray, input_name: str) -> dict[str, np.ndarray]:
    """onnxruntime's run of the graph at ``path`` on ``x`` (B, 3, H, W): every output by name, in the graph's order."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    outs = session.run(None, {input_name: x})
    return {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), outs, strict=True)}


def _output_shapes(source: Path, input_name: str, hw: tuple[int, int]) -> dict[str, tuple[int | str, ...]]:
    """Each output's shape, from onnxruntime's run of ``source`` on one blank image, the batch axis named "B"."""
    ran = run_graph(source, np.zeros((1, 3, *hw), np.float32), input_name)
    return {name: ("B", *v.shape[1:]) for name, v in ran.items()}


def read_interface(source: Path, model: nn.Module) -> Interface:
    """The interface of ``source`` (an ONNX graph of the model ``model`` was read from), checked against the model:
    ConfigError in one line for what the export cannot reproduce."""
    from vitreg.models.inspect import token_layout
    from vitreg.models.load.formats import onnx_graph as og
    from vitreg.models.presets import config_of

    if not source.is_file() or source.suffix != ".onnx":
        raise ConfigError(f"--like {source}: not an .onnx file")
    cfg = config_of(model)
    graph = og.load(source)
    g = og.Graph(graph, source, "an ONNX graph of the model's source")
    inputs = [i for i in graph.graph.input if i.name not in g.inits]
    if len(inputs) != 1 or len(_dims(inputs[0])) != 4:
        raise ConfigError(f"--like {source}: expected one (B, 3, H, W) input, found {len(inputs)} inputs")
    shape = _dims(inputs[0])
    if tuple(shape[2:]) != tuple(cfg.img_size) or shape[1] != 3:
        raise ConfigError(
            f"--like {source}: its input is {shape}, the model's (B, 3, {cfg.img_size[0]}, {cfg.img_size[1]})"
        )
    layout = token_layout(model, cfg.img_size)
    n_source = 1 + layout.grid[0] * layout.grid[1]  # [CLS] and the patches: the source had no registers
    width = int(getattr(model, "embed_dim"))  # noqa: B009
    outputs, projection = [], None
    ran = _output_shapes(source, inputs[0].name, cfg.img_size)  # exporters often name an output's sizes only
    for out in graph.graph.output:
        dims = ran[out.name]
        producer = g.producer.get(out.name)
        if len(dims) == 3 and dims[1:] == (n_source, width):
            normed = producer is not None and producer.op_type == "LayerNormalization"
            outputs.append(Output(out.name, "normed" if normed else "hidden", dims))
        elif len(dims) == 2 and isinstance(dims[1], int):
            weight = _projection(g, out.name, width)
            if weight is not None and weight.shape[0] == dims[1]:
                outputs.append(Output(out.name, "embeds", dims))
                projection = weight
            elif dims[1] == width:
                outputs.append(Output(out.name, "pooled", dims))
            else:
                raise ConfigError(f"--like {source}: output {out.name!r} {dims} is no projection of [CLS] vitreg reads")
        else:
            raise ConfigError(f"--like {source}: output {out.name!r} {dims} is no token output vitreg reproduces")
    axes = {i: str(d) for i, d in enumerate(shape) if isinstance(d, str) and d}
    return Interface(source, inputs[0].name, axes, outputs, projection)


class LikeSource(nn.Module):
    """``model``'s forward giving the source's outputs, in its order (see the module docstring)."""

    def __init__(self, model: nn.Module, interface: Interface):
        super().__init__()
        from vitreg.models.inspect import token_layout
        from vitreg.models.presets import config_of

        self.model = model
        self.kinds = [o.kind for o in interface.outputs]
        layout = token_layout(model, config_of(model).img_size)
        keep = [0, *range(layout.patch_slice.start, layout.patch_slice.stop)]  # [CLS] and the patches, no registers
        self.keep: torch.Tensor  # (1 + patches,) indices into the model's tokens
        self.projection: torch.Tensor  # (D, C), (0, 0) without an embeds output
        self.register_buffer("keep", torch.tensor(keep), persistent=False)
        proj = interface.projection if interface.projection is not None else np.zeros((0, 0), np.float32)
        self.register_buffer("projection", torch.from_numpy(np.ascontiguousarray(proj, np.float32)), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kept: list[torch.Tensor] = []
        vit: Any = self.model
        handle = vit.norm.register_forward_pre_hook(lambda _m, args: kept.append(args[0]))
        try:
            normed = vit.forward_features(x)  # (B, N + R, C) after the final norm; its input is kept above
        finally:
            handle.remove()
        tokens = kept[0]  # (B, N + R, C) before the final norm
        outs = []
        for kind in self.kinds:
            if kind == "hidden":
                outs.append(tokens[:, self.keep])
            elif kind == "normed":
                outs.append(normed[:, self.keep])
            elif kind == "embeds":
                outs.append(normed[:, 0] @ self.projection.T)  # (B, D)
            else:
                outs.append(normed[:, 0])
        return tuple(outs)
