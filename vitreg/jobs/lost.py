"""LOST object discovery on a model's patch features, scored with CorLoc against ground-truth boxes (`vitreg lost`).
Writes DIR/lost.json and DIR/figures/lost_examples.npz."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vitreg.config import to_dict, validate_all
from vitreg.data.scenes import SceneConfig, parse_scene_options
from vitreg.errors import ConfigError
from vitreg.jobs.specs import ImageSpec, ModelSpec, Runtime
from vitreg.results.lost import LostResult

DEFAULT_SYNTHETIC_IMAGES = 64
FeatureKind = Literal["k", "q", "v", "tokens"]  # as vitreg.eval.lost names them (not imported: it imports torch)
LOST_BATCH_SIZE = 16  # images per forward (same-size images are batched)
#: The keys LostConfig had before its images were an ImageSpec (``dataset`` is now ``images.src``).
_FLAT_IMAGE_KEYS = {"dataset": "src", "scenes": "scenes", "limit": "limit", "batch_size": "batch_size",
                    "workers": "workers", "strict": "strict"}  # fmt: skip


@dataclass(kw_only=True)
class LostConfig:
    model: ModelSpec
    runtime: Runtime = field(default_factory=Runtime)
    # images.src: a VOC root (Annotations/, JPEGImages/), a COCO instances JSON, or "synthetic[:options]" (scenes:
    # their base options, default seeded by runtime.seed); limit: at most N images (synthetic: 64 by default)
    images: ImageSpec = field(default_factory=lambda: ImageSpec(batch_size=LOST_BATCH_SIZE))
    image_root: str | None = None  # image folder when not in the standard place beside the annotations
    # keep-aspect: LOST's own protocol (full resolution, padded to a multiple of the patch; ``size``: the longer side
    # at most S); squash / crop / model: at the model's input size or S x S (the reproducibility study's 224, squash)
    resize: str = "keep-aspect"
    size: int | None = None
    # LOST
    layer: int = -1  # block whose features are used
    features: FeatureKind = "k"  # paper: k for DINOv2, v for DeiT-III and CLIP
    k: int = 100  # lowest-degree patches considered for the seed expansion
    biases: list[float] = field(default_factory=lambda: [0.0])  # added to the Gram matrix, one result each
    normalize: bool = False  # L2-normalise the features (cosine similarities)
    examples: int = 6  # images kept for the report's figure
    # more feature kinds from the same forward passes, each written as its own run directory: {kind: directory}
    also: dict[FeatureKind, str] = field(default_factory=dict)
    out: str

    @staticmethod
    def upgrade_keys(data: dict[str, Any]) -> dict[str, Any]:
        """Configs saved before LostConfig took an ImageSpec held its images flat (``dataset``, ``scenes``, ``limit``,
        ``batch_size``, ``workers``, ``strict``): read as ``images: {src, ...}`` (vitreg.config calls this)."""
        if isinstance(data.get("resize"), int) or (data.get("resize", "") is None and "size" not in data):
            # before --resize took a mode: an int was S x S squashed, none LOST's protocol at full resolution
            data = {**data, "resize": "squash" if data["resize"] else "keep-aspect", "size": data["resize"]}
        if "images" in data or not any(k in data for k in _FLAT_IMAGE_KEYS):
            return data
        out = {k: v for k, v in data.items() if k not in _FLAT_IMAGE_KEYS}
        images = {new: data[old] for old, new in _FLAT_IMAGE_KEYS.items() if old in data}
        out["images"] = {"batch_size": LOST_BATCH_SIZE, **images}  # LOST's own default when it was not saved
        return out

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigError(f"--k must be >= 1, got {self.k}")
        if not self.biases:
            raise ConfigError("--bias needs at least one number")
        if self.images.subset is not None:
            raise ConfigError("LOST runs over its dataset's images up to --limit; images.subset is not supported")
        from vitreg.models.processor import check_resize

        check_resize(self.resize, "size")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"--size must be >= 1, got {self.size}")
        bad = [k for k in self.also if k not in ("k", "q", "v", "tokens") or k == self.features]
        if bad:
            raise ConfigError(f"also: {bad[0]!r} is not another feature kind (k, q, v, tokens; not {self.features!r})")


def build_dataset(cfg: LostConfig, model: Any) -> tuple[Any, str]:
    """The box dataset and a description of the protocol used."""
    from vitreg.data.synthetic import SyntheticScenes
    from vitreg.data.transforms import ImageTransform
    from vitreg.eval.voc import BoxDataset, read_box_dataset

    images = cfg.images
    keyword, _, options = str(images.src).partition(":")
    if keyword == "synthetic":
        t = ImageTransform.for_model(model, "squash", img_size=cfg.size)
        t.owner = "scenes drawn at the input size"  # a square at the model's size: no geometry changes it
        # scene options (e.g. the training task's) apply first; the size always follows the model
        scenes = parse_scene_options(options, images.scenes or SceneConfig(seed=cfg.runtime.seed))
        scenes = dataclasses.replace(scenes, img_size=t.input_size)
        n = images.limit or DEFAULT_SYNTHETIC_IMAGES
        return SyntheticScenes(n, scenes, transform=t), f"synthetic scenes {t.input_size[0]}x{t.input_size[1]}"
    records = read_box_dataset(images.src, cfg.image_root)
    if images.limit is not None:
        records = records[: images.limit]
    if cfg.resize != "keep-aspect":
        t = ImageTransform.for_model(model, cfg.resize, img_size=cfg.size)
        h, w = t.input_size
        protocol = f"resized to {h}x{w}" if cfg.resize == "squash" else f"{cfg.resize} at {h}x{w}"
    else:
        t = ImageTransform.from_model(model, mode="patch_pad", max_side=cfg.size, interpolation="bicubic")
        t.owner = "LOST's protocol"
        most = f", longer side at most {cfg.size}" if cfg.size else ""
        protocol = f"full resolution{most}, padded to a multiple of the patch size (LOST's)"
        # Same-size images next to each other so that they share a forward and one (B, N, N) product.
        records = sorted(records, key=lambda r: t.output_size(r.size) if r.size else (0, 0))
    return BoxDataset(records, t), protocol


def lost(cfg: LostConfig) -> LostResult:
    """LOST over every image of the dataset for each bias; writes DIR/lost.json (and example arrays), and the same for
    each kind of ``cfg.also`` into its own directory, from the same forward passes."""
    from vitreg.eval.lost import run_lost

    validate_all(cfg)
    model, device, dtype = cfg.model.start(cfg.runtime)
    ds, protocol = build_dataset(cfg, model)
    loader = cfg.images.loader(ds)
    kinds = [cfg.features, *cfg.also]
    summaries = run_lost(
        model,
        loader,
        layer=cfg.layer,
        kind=kinds,
        k=cfg.k,
        biases=cfg.biases,
        normalize=cfg.normalize,
        dtype=dtype,
        device=device,
        examples=cfg.examples,
    )
    outs = {cfg.features: cfg.out, **cfg.also}
    results = {}
    for kind, run in summaries.items():
        own = dataclasses.replace(cfg, features=kind, also={}, out=outs[kind])  # what that directory's run did
        results[kind] = _write(own, run, model, ds, protocol)
    return results[cfg.features]


def _write(cfg: LostConfig, run: Any, model: Any, ds: Any, protocol: str) -> LostResult:
    """lost.json and the example arrays of one feature kind into ``cfg.out``."""
    import numpy as np

    from vitreg import atomic
    from vitreg.models.inspect import no_cls_notes, num_registers
    from vitreg.results.rundir import LOST_EXAMPLES, write_result

    ex = run.examples
    result = LostResult(
        model=cfg.model.spec,
        registers=num_registers(model),
        dataset=str(cfg.images.src),
        protocol=protocol,
        preprocessing=ds.transform.describe(),
        config=to_dict(cfg),
        notes=no_cls_notes(model, "lost"),
        settings=run.settings,
        results=run.results,
        images=run.images,
        bad_images=run.bad_images,
        per_image=run.per_image,
    )
    out = Path(cfg.out)
    write_result(out, result)
    if ex["image"]:
        # One key per example and field (images differ in size): the file loads without pickle.
        arrays = {f"{k}_{i}": np.asarray(v) for k, vs in ex.items() for i, v in enumerate(vs)}
        arrays |= {
            "count": np.asarray(len(ex["image"])),
            "mean": np.asarray(ds.transform.mean),
            "std": np.asarray(ds.transform.std),
        }
        atomic.write_npz(out / LOST_EXAMPLES, arrays)
    return result
