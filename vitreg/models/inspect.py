"""Inspector: one forward pass that captures what the analyses need, with fused attention left on.

Works on timm's ``VisionTransformer`` (DINOv2, CLIP, DeiT-III, vitreg's own) and ``Eva`` (DINOv3, with RoPE and
storage tokens, which count as registers):

- block outputs (the residual stream after each block, *before* the final norm: what the paper's norms use),
- the final normed tokens (after ``model.norm``) and the head's output,
- q, k, v of chosen layers (LOST uses keys): q and k from hooks on ``attn.q_norm`` / ``attn.k_norm`` (both classes
  call them right after the projection), v from the projection itself; keys are as projected, before any RoPE,
- attention probabilities of chosen layers for chosen query tokens ([CLS] and each register by default),
  recomputed as softmax(q k^T * scale) from the captured q/k, with RoPE applied to the patch tokens as the block
  itself does (timm's ``apply_rot_embed_cat``, the block's own rope), so SDPA stays on everywhere else.

Token bookkeeping lives here once: ``[CLS]? + registers + patches`` in that order (timm ``_pos_embed``).
Never slice ``x[:, 1:]``: with registers that counts registers as patches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat

from vitreg.device import autocast
from vitreg.errors import ConfigError


class CaptureError(RuntimeError):
    """A capture that captured nothing, or a model the Inspector cannot hook."""


@dataclass(frozen=True)
class TokenLayout:
    has_cls: bool
    num_registers: int
    grid: tuple[int, int]  # (H, W) patches

    @property
    def num_prefix(self) -> int:
        return int(self.has_cls) + self.num_registers

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def register_slice(self) -> slice:
        start = int(self.has_cls)
        return slice(start, start + self.num_registers)

    @property
    def patch_slice(self) -> slice:
        return slice(self.num_prefix, self.num_tokens)

    def query_names(self, queries: Sequence[int]) -> list[str]:
        names = []
        for q in queries:
            if self.has_cls and q == 0:
                names.append("cls")
            elif q < self.num_prefix:
                names.append(f"reg{q - int(self.has_cls)}")
            else:
                p = q - self.num_prefix
                names.append(f"patch{p // self.grid[1]}_{p % self.grid[1]}")
        return names


@dataclass
class TokenSplit:
    cls: torch.Tensor | None  # (B, C), None for models without [CLS]
    registers: torch.Tensor  # (B, R, C); R may be 0
    patches: torch.Tensor  # (B, H, W, C)


def num_registers(model: nn.Module) -> int:
    """Register tokens of a timm ViT (VisionTransformer ``reg_token``, Eva/DINOv3 storage tokens): its prefix tokens
    other than [CLS]."""
    vit: Any = model  # timm's attributes (patch_embed, cls_token, ...) are dynamic on nn.Module
    return int(vit.num_prefix_tokens) - int(vit.cls_token is not None)


def token_layout(model: nn.Module, image_hw: tuple[int, ...]) -> TokenLayout:
    """Layout of the token sequence a timm ViT produces for an image of size ``image_hw`` (H, W)."""
    vit: Any = model
    pe = vit.patch_embed
    h, w = int(image_hw[0]), int(image_hw[1])
    if hasattr(pe, "dynamic_feat_size"):
        gh, gw = (int(g) for g in pe.dynamic_feat_size((h, w)))
    else:
        gh, gw = h // pe.patch_size[0], w // pe.patch_size[1]
    return TokenLayout(has_cls=vit.cls_token is not None, num_registers=num_registers(model), grid=(gh, gw))


def split_tokens(x: torch.Tensor, layout: TokenLayout) -> TokenSplit:
    """(B, N, C) token sequence -> named [CLS] (B, C), registers (B, R, C), patches (B, H, W, C)."""
    if x.ndim != 3 or x.shape[1] != layout.num_tokens:
        raise ValueError(f"expected (B, {layout.num_tokens}, C) tokens for {layout}, got {tuple(x.shape)}")
    b, _, c = x.shape
    cls = x[:, 0] if layout.has_cls else None
    regs = x[:, layout.register_slice]
    patches = x[:, layout.patch_slice].reshape(b, layout.grid[0], layout.grid[1], c)
    return TokenSplit(cls=cls, registers=regs, patches=patches)


@dataclass
class QKV:
    q: torch.Tensor  # (B, heads, N, head_dim), after q_norm (before RoPE)
    k: torch.Tensor  # (B, heads, N, head_dim), after k_norm (before RoPE)
    v: torch.Tensor  # (B, heads, N, head_dim)


@dataclass
class Capture:
    """What one Inspector pass captured; layer keys are block indices (0-based)."""

    layout: TokenLayout
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)  # block outputs, pre-final-norm (B, N, C)
    normed: torch.Tensor | None = None  # after the final norm (B, N, C)
    output: torch.Tensor | None = None  # the model's output (logits or pooled features) (B, K)
    qkv: dict[int, QKV] = field(default_factory=dict)
    attention: dict[int, torch.Tensor] = field(default_factory=dict)  # (B, heads, Q, N) probabilities
    queries: list[int] = field(default_factory=list)  # token index of each attention row Q

    def split_tokens(self, layer: int | str = "normed") -> TokenSplit:
        """Named cls / registers / patches of block ``layer``'s output, or of the final normed tokens."""
        x = self.normed if layer == "normed" else self.tokens[int(layer)]
        if x is None:
            raise CaptureError(f"layer {layer!r} was not captured")
        return split_tokens(x, self.layout)

    def attention_maps(self, layer: int) -> dict[str, torch.Tensor]:
        """Attention of each query token over the patch grid, mean over heads: name -> (B, H, W)."""
        a = self.attention[layer].float().mean(1)  # (B, Q, N)
        grid = a[..., self.layout.patch_slice].reshape(a.shape[0], a.shape[1], *self.layout.grid)
        return {name: grid[:, i] for i, name in enumerate(self.layout.query_names(self.queries))}


def _resolve_layers(spec: Iterable[int] | str | None, depth: int) -> list[int]:
    if spec is None:
        return []
    if spec == "all":
        return list(range(depth))
    if isinstance(spec, int):
        spec = [spec]
    out = []
    for i in spec:
        j = int(i) + depth if int(i) < 0 else int(i)
        if not 0 <= j < depth:
            raise ConfigError(f"layer {i} out of range for a model with {depth} blocks")
        out.append(j)
    return sorted(set(out))


class Inspector:
    """Runs a timm VisionTransformer or Eva and captures tokens, q/k/v and attention for the layers asked for.

    >>> cap = Inspector(model).run(images, layers="all", attention_layers=[-1])
    >>> cap.split_tokens(-1 % len(model.blocks)).patches.shape  # (B, H, W, C)
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None):
        if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
            raise CaptureError(f"Inspector needs a timm VisionTransformer or Eva, got {type(model).__name__}")
        vit: Any = model  # timm's attributes (blocks, norm, ...) are dynamic on nn.Module
        self.model = vit
        self.dtype = dtype  # autocast dtype (bf16 on capable CPUs), None = fp32
        self.depth = len(vit.blocks)

    @torch.inference_mode()
    def run(
        self,
        images: torch.Tensor,
        layers: Iterable[int] | str | None = "all",
        attention_layers: Iterable[int] | str | None = (-1,),
        qkv_layers: Iterable[int] | str | None = None,
        queries: str | Sequence[int] = "prefix",
        normed: bool = True,
    ) -> Capture:
        """Capture for a batch ``images`` (B, 3, H, W). ``queries``: "prefix" ([CLS] + registers), "all", or
        token indices. Attention of layer L needs its q/k, so those layers are hooked for qkv too (kept only if
        listed in ``qkv_layers``)."""
        model = self.model
        device = next(model.parameters()).device
        images = images.to(device)
        layout = token_layout(model, tuple(images.shape[-2:]))
        tok_layers = _resolve_layers(layers, self.depth)
        att_layers = _resolve_layers(attention_layers, self.depth)
        keep_qkv = _resolve_layers(qkv_layers, self.depth)
        if queries == "prefix":
            q_idx = list(range(layout.num_prefix))
        elif queries == "all":
            q_idx = list(range(layout.num_tokens))
        else:
            q_idx = [int(q) for q in queries]
        if att_layers and not q_idx:
            att_layers = []  # a model with neither [CLS] nor registers has no prefix queries
        if not (tok_layers or att_layers or keep_qkv or normed):
            raise CaptureError("nothing to capture: ask for layers, attention_layers, qkv_layers or normed")

        cap = Capture(layout=layout, queries=q_idx)
        hooked: dict[int, _AttentionHooks] = {}
        handles = []
        try:
            for i in tok_layers:
                handles.append(model.blocks[i].register_forward_hook(self._store(cap.tokens, i)))
            for i in sorted(set(att_layers) | set(keep_qkv)):
                hooked[i] = _AttentionHooks(model.blocks[i].attn, i)
                handles += hooked[i].handles
            if normed:
                handles.append(model.norm.register_forward_hook(self._store_normed(cap)))
            with autocast(device, self.dtype):
                cap.output = model(images).float()
        finally:
            for h in handles:
                h.remove()

        for i, hooks in hooked.items():
            qkv = hooks.qkv()
            if i in keep_qkv:
                cap.qkv[i] = qkv
            if i in att_layers:
                cap.attention[i] = hooks.attention(qkv, q_idx)
        missing = [i for i in tok_layers if i not in cap.tokens] + [i for i in att_layers if i not in cap.attention]
        if missing or (normed and cap.normed is None):
            raise CaptureError(f"capture failed: hooks did not fire for layers {missing or ['norm']}")
        return cap

    @staticmethod
    def _store(target: dict, i: int):
        def hook(_module, _inputs, output):
            target[i] = output.detach().float()

        return hook

    @staticmethod
    def _store_normed(cap: Capture):
        def hook(_module, _inputs, output):
            cap.normed = output.detach().float()

        return hook


class _AttentionHooks:
    """The hooks on one block's attention that give its q, k, v and its RoPE, and the attention recomputed from them.

    q and k come from ``q_norm`` / ``k_norm`` (identity unless the model has qk-norm), which timm's Attention and
    EvaAttention call on the projected q and k; v from the projection output (``qkv`` fused, ``v_proj`` split), or,
    for an Eva whose fused projection adds a separate q/v bias (timm then calls ``F.linear`` on ``qkv.weight``
    directly), from the attention's input and that weight. RoPE is the ``rope`` argument the block passes in.
    """

    def __init__(self, attn: Any, layer: int):
        self.attn, self.layer = attn, layer
        self.got: dict[str, Any] = {}
        self.handles = [
            attn.register_forward_pre_hook(self._inputs, with_kwargs=True),
            attn.q_norm.register_forward_hook(self._keep("q")),
            attn.k_norm.register_forward_hook(self._keep("k")),
        ]
        proj = getattr(attn, "qkv", None)
        if isinstance(proj, nn.Linear) and getattr(attn, "q_bias", None) is None:
            self.handles.append(proj.register_forward_hook(self._keep("qkv")))
        elif isinstance(getattr(attn, "v_proj", None), nn.Linear):
            self.handles.append(attn.v_proj.register_forward_hook(self._keep("v_flat")))
        elif not isinstance(proj, nn.Linear):
            raise CaptureError(f"block {layer}'s attention ({type(attn).__name__}) has no q/k/v projection to hook")

    def _inputs(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.got["x"] = args[0] if args else kwargs.get("x")
        self.got["rope"] = kwargs.get("rope")

    def _keep(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self.got[name] = output.detach()

        return hook

    def _v(self) -> torch.Tensor:
        a, got = self.attn, self.got
        b, _, n, hd = got["q"].shape
        if "qkv" in got:
            return got["qkv"].reshape(b, n, 3, -1, hd)[:, :, 2].transpose(1, 2)  # (B, kv heads, N, hd)
        if "v_flat" in got:
            return got["v_flat"].reshape(b, n, -1, hd).transpose(1, 2)
        c = a.qkv.weight.shape[1]
        v = F.linear(got["x"], a.qkv.weight[-c:], a.v_bias)  # (B, N, C): the v third of the fused projection
        return v.reshape(b, n, -1, hd).transpose(1, 2)

    def qkv(self) -> QKV:
        if "q" not in self.got or "k" not in self.got:
            raise CaptureError(f"capture failed: the q/k hooks of block {self.layer} did not fire")
        return QKV(q=self.got["q"].float(), k=self.got["k"].float(), v=self._v().float())

    def attention(self, qkv: QKV, queries: list[int]) -> torch.Tensor:
        """(B, heads, Q, N) softmax(q k^T * scale) for the ``queries`` rows, after the block's RoPE."""
        q, k = qkv.q, qkv.k
        rope = self.got.get("rope")
        if rope is not None:
            npt = int(getattr(self.attn, "num_prefix_tokens", 0))  # prefix tokens ([CLS], registers) get no RoPE
            half = bool(getattr(self.attn, "rotate_half", False))
            rope = rope.float()
            q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2)
        if k.shape[1] != q.shape[1]:  # grouped-query attention: each k/v head serves several q heads
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        logits = (q[:, :, queries] * self.attn.scale) @ k.transpose(-2, -1)  # (B, heads, Q, N)
        return logits.softmax(dim=-1)
