"""Inspector: one forward pass that captures what the analyses need, with fused attention left on.

Works on timm's ``VisionTransformer`` (DINOv2, CLIP, DeiT-III, vitreg's own), ``Eva`` (DINOv3, with RoPE and
storage tokens, which count as registers) and ``Beit`` (BEiT, data2vec-vision: relative position biases):

- block outputs (the residual stream after each block, *before* the final norm: what the paper's norms use), or
  only their per-token norms (``norm_layers``: a (B, N) vector per block instead of (B, N, C) tokens),
- the final normed tokens (after ``model.norm``) and the head's output,
- q, k, v of chosen layers (LOST uses keys): q and k from hooks on ``attn.q_norm`` / ``attn.k_norm`` (both classes
  call them right after the projection), v from the projection itself; keys are as projected, before any RoPE,
- attention probabilities of chosen layers for chosen query tokens ([CLS] and each register by default),
  recomputed as softmax(q k^T * scale) from the captured q/k, with RoPE applied to the patch tokens as the block
  itself does (timm's ``apply_rot_embed_cat``, the block's own rope), so SDPA stays on everywhere else; for a Beit,
  q/k/v are recomputed from the attention's input (its Attention calls no q_norm) and the logits get the block's
  relative position bias and the shared one the model passes in, as timm's Beit Attention adds them.

A pass can also keep chosen blocks' *inputs* (``keep_inputs``) and a later pass over the same images can start at
such a block (:class:`Resume`): the blocks before it are skipped, which gives the same numbers when the model's
blocks before it are the same (e.g. test-time registers that move neurons of later blocks only).

Token bookkeeping lives here once: ``[CLS]? + [DIST]? + registers + patches`` in that order (timm ``_pos_embed``;
DeiT's distillation token, timm's ``dist_token``, is a prefix token of its own: neither a register nor a patch).
Never slice ``x[:, 1:]``: with registers that counts registers as patches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat
from timm.models.beit import Attention as BeitAttention

from vitreg.device import autocast
from vitreg.errors import ConfigError


class CaptureError(RuntimeError):
    """A capture that captured nothing, or a model the Inspector cannot hook."""


class _StopForward(Exception):
    """Raised by a hook to end a forward pass after the last block that is needed."""


@contextmanager
def stop_after_block(model: nn.Module, block: int) -> Iterator[None]:
    """Within the block, a forward of ``model`` stops right after block ``block`` (hooks on the blocks up to it fire
    as in a full pass, later blocks do not run); wrap the call in :func:`stopped`."""

    def hook(_module: nn.Module, _inputs: Any, _output: Any) -> None:
        raise _StopForward

    vit: Any = model
    handle = vit.blocks[block].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def stopped() -> Iterator[None]:
    """Swallows the end of a pass cut short by :func:`stop_after_block`."""
    with suppress(_StopForward):
        yield


@dataclass(frozen=True)
class TokenLayout:
    has_cls: bool
    num_registers: int
    grid: tuple[int, int]  # (H, W) patches
    distilled: bool = False  # DeiT's distillation token right after [CLS]

    @property
    def num_prefix(self) -> int:
        return int(self.has_cls) + int(self.distilled) + self.num_registers

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def register_slice(self) -> slice:
        start = int(self.has_cls) + int(self.distilled)
        return slice(start, start + self.num_registers)

    @property
    def patch_slice(self) -> slice:
        return slice(self.num_prefix, self.num_tokens)

    def query_names(self, queries: Sequence[int]) -> list[str]:
        names = []
        for q in queries:
            if self.has_cls and q == 0:
                names.append("cls")
            elif self.distilled and q == int(self.has_cls):
                names.append("dist")
            elif q < self.num_prefix:
                names.append(f"reg{q - self.register_slice.start}")
            else:
                p = q - self.num_prefix
                names.append(f"patch{p // self.grid[1]}_{p % self.grid[1]}")
        return names


@dataclass
class TokenSplit:
    cls: torch.Tensor | None  # (B, C), None for models without [CLS]
    registers: torch.Tensor  # (B, R, C); R may be 0
    patches: torch.Tensor  # (B, H, W, C)


def _distilled(model: nn.Module) -> bool:
    return getattr(model, "dist_token", None) is not None


def num_registers(model: nn.Module) -> int:
    """Register tokens of a timm ViT (VisionTransformer ``reg_token``, Eva/DINOv3 storage tokens): its prefix tokens
    other than [CLS] and DeiT's distillation token."""
    vit: Any = model  # timm's attributes (patch_embed, cls_token, ...) are dynamic on nn.Module
    return int(vit.num_prefix_tokens) - int(vit.cls_token is not None) - int(_distilled(model))


#: What each job does without a [CLS] token (SigLIP, timm's ``*_gap`` models), for its report
NO_CLS = {
    "diagnose": "the norms, the outlier rule and the pictures use the patch tokens as always; there is no [CLS] norm, "
    "[CLS] attention map or [CLS] sink share",
    "fix": "the register neurons are found and moved as always; how much of the output the fix keeps is measured by "
    "the final [CLS]'s cosine to the original's, which this model does not have (not measured)",
    "probe": "the local probes and the outlier/normal rows of the global probe run as always; the global probe has "
    "no [CLS] row and the linear probe classifies the mean patch token",
    "lost": "LOST needs none (it seeds and grows the box from patch features)",
}


def no_cls_notes(model: nn.Module, job: str) -> list[str]:
    """One line for ``job``'s report when ``model`` has no [CLS] token (empty when it has one): what the job does
    without it, and what the model pools instead."""
    vit: Any = model
    if getattr(vit, "cls_token", None) is not None:
        return []
    pool = {"map": "attention pooling (timm's attn_pool)", "avg": "the mean of the patch tokens"}
    pooled = pool.get(str(getattr(vit, "global_pool", "")), f"global_pool {getattr(vit, 'global_pool', '?')!r}")
    regs = num_registers(model)
    extra = ""
    if job == "diagnose":
        extra = "; the attention maps are the registers'" if regs else "; with no register either, no attention maps"
    return [f"This model has no [CLS] token (its image embedding is {pooled}): {NO_CLS[job]}{extra}."]


def token_layout(model: nn.Module, image_hw: tuple[int, ...]) -> TokenLayout:
    """Layout of the token sequence a timm ViT produces for an image of size ``image_hw`` (H, W)."""
    vit: Any = model
    pe = vit.patch_embed
    h, w = int(image_hw[0]), int(image_hw[1])
    if hasattr(pe, "dynamic_feat_size"):
        gh, gw = (int(g) for g in pe.dynamic_feat_size((h, w)))
    else:
        gh, gw = h // pe.patch_size[0], w // pe.patch_size[1]
    has_cls = vit.cls_token is not None
    return TokenLayout(has_cls=has_cls, num_registers=num_registers(model), grid=(gh, gw), distilled=_distilled(model))


def split_tokens(x: torch.Tensor, layout: TokenLayout) -> TokenSplit:
    """(B, N, C) token sequence -> named [CLS] (B, C), registers (B, R, C), patches (B, H, W, C)."""
    if x.ndim != 3 or x.shape[1] != layout.num_tokens:
        raise ValueError(f"expected (B, {layout.num_tokens}, C) tokens for {layout}, got {tuple(x.shape)}")
    b, _, c = x.shape
    cls = x[:, 0] if layout.has_cls else None
    regs = x[:, layout.register_slice]
    patches = x[:, layout.patch_slice].reshape(b, layout.grid[0], layout.grid[1], c)
    return TokenSplit(cls=cls, registers=regs, patches=patches)


def split_norms(n: torch.Tensor, layout: TokenLayout) -> TokenSplit:
    """(B, N) per-token norms -> named [CLS] (B,), registers (B, R), patches (B, H, W)."""
    if n.ndim != 2 or n.shape[1] != layout.num_tokens:
        raise ValueError(f"expected (B, {layout.num_tokens}) norms for {layout}, got {tuple(n.shape)}")
    cls = n[:, 0] if layout.has_cls else None
    return TokenSplit(
        cls=cls, registers=n[:, layout.register_slice], patches=n[:, layout.patch_slice].reshape(-1, *layout.grid)
    )


@dataclass
class Resume:
    """Start a pass at block ``block`` from that block's input captured by an earlier pass over the same images
    (``Capture.inputs``, asked for with ``keep_inputs``): blocks before it are skipped. ``norms``: the earlier pass's
    per-token norms (B, N) of the skipped blocks, returned as this pass's norms of those blocks."""

    block: int
    tokens: torch.Tensor  # (B, N, C) the input of block ``block``
    norms: dict[int, torch.Tensor] = field(default_factory=dict)


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
    norms: dict[int, torch.Tensor] = field(default_factory=dict)  # per-token norms of block outputs (B, N)
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # block inputs (B, N, C), for a later Resume
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

    def split_norms(self, layer: int) -> TokenSplit:
        """Named cls (B,) / registers (B, R) / patches (B, H, W) norms of block ``layer``'s output tokens (captured
        with ``norm_layers``, or computed from its captured tokens)."""
        if layer in self.norms:
            return split_norms(self.norms[layer], self.layout)
        if layer in self.tokens:
            return split_norms(self.tokens[layer].norm(dim=-1), self.layout)
        raise CaptureError(f"layer {layer!r} was not captured")

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
        norm_layers: Iterable[int] | str | None = None,
        keep_inputs: Iterable[int] | None = None,
        resume: Resume | None = None,
        stop_after: int | None = None,
    ) -> Capture:
        """Capture for a batch ``images`` (B, 3, H, W). ``queries``: "prefix" ([CLS] + registers), "all", or
        token indices. Attention of layer L needs its q/k, so those layers are hooked for qkv too (kept only if
        listed in ``qkv_layers``). ``norm_layers``: blocks whose output is kept as per-token norms (B, N) only.
        ``keep_inputs``: blocks whose input is kept (``Capture.inputs``); ``resume``: start at a block from such an
        input (the blocks before it are skipped; of those only norms, from ``resume.norms``, can be asked for).
        ``stop_after``: end the pass after this block (no output, no normed tokens, nothing of later blocks)."""
        model = self.model
        device = next(model.parameters()).device
        images = images.to(device)
        _check_input_size(model, tuple(images.shape[-2:]))
        layout = token_layout(model, tuple(images.shape[-2:]))
        tok_layers = _resolve_layers(layers, self.depth)
        norm_only = [i for i in _resolve_layers(norm_layers, self.depth) if i not in tok_layers]
        att_layers = _resolve_layers(attention_layers, self.depth)
        keep_qkv = _resolve_layers(qkv_layers, self.depth)
        inputs = _resolve_layers(keep_inputs, self.depth)
        q_idx = _query_indices(queries, layout)
        if att_layers and not q_idx:
            att_layers = []  # a model with neither [CLS] nor registers has no prefix queries
        if not (tok_layers or norm_only or att_layers or keep_qkv or normed or inputs):
            raise CaptureError("nothing to capture: ask for layers, attention_layers, qkv_layers or normed")
        start = 0 if resume is None else _resolve_layers([resume.block], self.depth)[0]
        skipped = [i for i in (*tok_layers, *att_layers, *keep_qkv, *inputs) if i < start]
        skipped += [i for i in norm_only if i < start and (resume is None or i not in resume.norms)]
        if skipped:
            raise CaptureError(f"a pass resumed at block {start} cannot capture blocks {sorted(set(skipped))}")
        stop = self.depth - 1 if stop_after is None else _resolve_layers([stop_after], self.depth)[0]
        beyond = [i for i in (*tok_layers, *norm_only, *att_layers, *keep_qkv, *inputs) if i > stop]
        if beyond or (normed and stop < self.depth - 1):
            raise CaptureError(f"a pass stopped after block {stop} cannot capture {sorted(set(beyond)) or 'normed'}")

        cap = Capture(layout=layout, queries=q_idx)
        if resume is not None:
            cap.norms.update({i: resume.norms[i] for i in norm_only if i < start})
        hooked: dict[int, _AttentionHooks] = {}
        handles = []
        try:
            blocks = model.blocks
            handles += [blocks[i].register_forward_hook(self._store(cap, i, keep=True)) for i in tok_layers]
            run_norms = [i for i in norm_only if i >= start]  # the others came from resume.norms
            handles += [blocks[i].register_forward_hook(self._store(cap, i, keep=False)) for i in run_norms]
            handles += [blocks[i].register_forward_pre_hook(self._store_input(cap, i)) for i in inputs]
            for i in sorted(set(att_layers) | set(keep_qkv)):
                hooked[i] = _AttentionHooks(blocks[i].attn, i)
                handles += hooked[i].handles
            if normed:
                handles.append(model.norm.register_forward_hook(self._store_normed(cap)))
            if resume is not None and start:
                handles.append(blocks[start].register_forward_pre_hook(_substitute(resume.tokens.to(device))))
            with autocast(device, self.dtype), _skipping(blocks[:start]):
                if stop < self.depth - 1:
                    with stop_after_block(model, stop), stopped():
                        model(images)
                else:
                    cap.output = model(images).float()
        finally:
            for h in handles:
                h.remove()

        for i, hooks in hooked.items():
            qkv = hooks.qkv(v=i in keep_qkv)
            if i in keep_qkv:
                cap.qkv[i] = qkv
            if i in att_layers:
                cap.attention[i] = hooks.attention(qkv, q_idx)
        missing = [i for i in tok_layers if i not in cap.tokens] + [i for i in att_layers if i not in cap.attention]
        missing += [i for i in norm_only if i not in cap.norms]
        if missing or (normed and cap.normed is None):
            raise CaptureError(f"capture failed: hooks did not fire for layers {missing or ['norm']}")
        return cap

    @staticmethod
    def _store(cap: Capture, i: int, keep: bool):
        """Block ``i``'s output: its tokens (and, when kept, nothing else: norms come from them on demand) or only
        their norms (B, N) (the tokens are then freed with the pass)."""

        def hook(_module, _inputs, output):
            x = output.detach().float()
            if keep:
                cap.tokens[i] = x
            else:
                with torch.autocast(x.device.type, enabled=False):  # in fp32, as on captured tokens after the pass
                    cap.norms[i] = x.norm(dim=-1)

        return hook

    @staticmethod
    def _store_input(cap: Capture, i: int):
        def hook(_module, args):
            cap.inputs[i] = args[0].detach()

        return hook

    @staticmethod
    def _store_normed(cap: Capture):
        def hook(_module, _inputs, output):
            cap.normed = output.detach().float()

        return hook


def _check_input_size(model: nn.Module, hw: tuple[int, ...]) -> None:
    """ConfigError for an input a fixed-size model cannot read (timm's Beit: its position tables are built for one
    grid, and it has no ``dynamic_img_size``), before timm's own assertion would end the pass with a traceback."""
    pe: Any = getattr(model, "patch_embed", None)
    own = tuple(int(s) for s in getattr(pe, "img_size", None) or ())
    if getattr(pe, "strict_img_size", False) and own and tuple(int(s) for s in hw) != own:
        raise ConfigError(
            f"{type(model).__name__} reads images of its own size only ({own[0]}x{own[1]}), got {hw[0]}x{hw[1]}: "
            f"load the model at that size (--img-size), which resamples its position tables"
        )


def _substitute(tokens: torch.Tensor):
    """Pre-hook of the block a resumed pass starts at: its input is the one kept by the earlier pass."""

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if args[0].shape != tokens.shape:
            raise CaptureError(f"resumed pass: block input {tuple(args[0].shape)} != kept {tuple(tokens.shape)}")
        return (tokens, *args[1:])

    return hook


def _query_indices(queries: str | Sequence[int], layout: TokenLayout) -> list[int]:
    if queries == "prefix":
        return list(range(layout.num_prefix))
    if queries == "all":
        return list(range(layout.num_tokens))
    return [int(q) for q in queries]


def _identity(x: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
    return x


@contextmanager
def _skipping(blocks: Iterable[nn.Module]) -> Iterator[None]:
    """Within the block, ``blocks`` pass their input through unchanged (a resumed pass supplies the real input of the
    first block it runs)."""
    skipped = list(blocks)
    for b in skipped:
        b.forward = _identity  # an instance attribute shadows the class's forward; deleted again below
    try:
        yield
    finally:
        for b in skipped:
            del b.forward


class _AttentionHooks:
    """The hooks on one block's attention that give its q, k, v and its RoPE, and the attention recomputed from them.

    q and k come from ``q_norm`` / ``k_norm`` (identity unless the model has qk-norm), which timm's Attention and
    EvaAttention call on the projected q and k; v from the projection output (``qkv`` fused, ``v_proj`` split), or,
    for an Eva whose fused projection adds a separate q/v bias (timm then calls ``F.linear`` on ``qkv.weight``
    directly), from the attention's input and that weight. RoPE is the ``rope`` argument the block passes in.

    timm's Beit Attention calls no q_norm / k_norm: its q, k, v are recomputed from its input (its fused ``qkv``
    weight and ``q_bias`` / zero ``k_bias`` / ``v_bias``), and its relative position bias (the block's own table, and
    the ``shared_rel_pos_bias`` argument the model passes in) is added to the logits as it adds them.
    """

    def __init__(self, attn: Any, layer: int):
        self.attn, self.layer = attn, layer
        self.got: dict[str, Any] = {}
        self.beit = isinstance(attn, BeitAttention)
        if self.beit:
            self.handles = [attn.register_forward_pre_hook(self._inputs, with_kwargs=True)]
            return
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
        shared = args[1] if len(args) > 1 else kwargs.get("shared_rel_pos_bias")  # Beit: (heads, N, N) or None
        self.got["shared"] = shared.detach() if shared is not None else None

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

    def _beit_qkv(self) -> QKV:
        """q, k, v of a Beit attention from its input, as its forward projects them (float32)."""
        a = self.attn
        if self.got.get("x") is None:
            raise CaptureError(f"capture failed: the attention hook of block {self.layer} did not fire")
        x = self.got["x"].float()  # (B, N, C): the attention's input (after norm1)
        bias = None if a.q_bias is None else torch.cat((a.q_bias, a.k_bias, a.v_bias)).float()  # k's is zeros
        qkv = F.linear(x, a.qkv.weight.float(), bias)  # (B, N, 3 * heads * hd)
        q, k, v = qkv.reshape(x.shape[0], x.shape[1], 3, a.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return QKV(q=q, k=k, v=v)  # each (B, heads, N, hd)

    def qkv(self, v: bool = True) -> QKV:
        """q, k and (when ``v``; attention alone does not need it) v as float32."""
        if self.beit:
            return self._beit_qkv()
        if "q" not in self.got or "k" not in self.got:
            raise CaptureError(f"capture failed: the q/k hooks of block {self.layer} did not fire")
        q, k = self.got["q"].float(), self.got["k"].float()
        return QKV(q=q, k=k, v=self._v().float() if v else k.new_zeros(0))

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
        bias = self._beit_bias() if self.beit else None
        if bias is not None:
            logits = logits + bias[:, :, queries]
        return logits.softmax(dim=-1)

    def _beit_bias(self) -> torch.Tensor | None:
        """(1, heads, N, N) the relative position bias a Beit attention adds to its logits: its own table's plus the
        shared one (None when it has neither: a BEiT with absolute positions only)."""
        a, shared = self.attn, self.got.get("shared")
        parts = [shared.float().reshape(-1, *shared.shape[-3:])] if shared is not None else []  # (1, heads, N, N)
        if a.relative_position_bias_table is not None:
            parts.append(a._get_rel_pos_bias().float())  # (1, heads, N, N)
        return sum(parts[1:], parts[0]) if parts else None
