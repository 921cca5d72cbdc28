"""Sample dicts, bad-file markers, collation and the DataLoader that skips (or, strict, stops at) bad files.

Sample dict (one image), as returned by every dataset of :mod:`vitreg.data`:

* ``image``: float tensor (3, H, W), normalised; ``index``: int (position in the dataset); ``path``: str (the file,
  or e.g. "synthetic/seed0/17", "cifar.npz#3"); ``orig_size``: (W, H) before the transform;
* when available: ``label`` int; ``boxes`` float32 (K, 4) xyxy in transformed pixel coordinates (boxes cropped away
  by the transform are dropped, with their per-box fields); ``box_labels`` long (K,); ``iscrowd`` bool (K,);
  ``mask`` long (H, W) with 0 = background; ``instances`` long (H, W); ``depth`` float (H, W).

A file that cannot be used becomes a :class:`BadSample` instead of raising. :func:`collate` drops the markers and
lists them under ``"bad"``; :class:`SkippingLoader` (made by :func:`make_loader`) logs each skipped file once at
WARNING, accumulates them in ``loader.skipped`` ({path: reason}, across epochs) and, when strict, raises
``BadImageError`` naming the first bad file. Markers travel through worker processes as plain data and the error is
raised in the main process, so it keeps its type with ``num_workers > 0``.

Typical use::

    loader = make_loader(dataset, batch_size=32)
    skipped: list[tuple[str, str]] = []
    for batch in iterate_batches(loader, skipped):  # empty batches (all files bad) are not yielded
        ...
    # skipped == [(path, reason), ...] in the order met; loader.skipped has the same as a dict
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from vitreg.errors import BadImageError

__all__ = [
    "PER_BOX_KEYS",
    "BadSample",
    "SkippingLoader",
    "collate",
    "iterate_batches",
    "log_skipped",
    "make_loader",
    "make_sample",
]

logger = logging.getLogger(__name__)

# Fields with one entry per box: always collated as lists (K differs between images), and filtered with the boxes.
PER_BOX_KEYS: frozenset[str] = frozenset({"boxes", "box_labels", "iscrowd", "colors", "category_ids", "ann_ids"})


@dataclass(frozen=True)
class BadSample:
    """Marker returned by a dataset in place of a sample whose file could not be used."""

    path: str
    reason: str
    index: int = -1


# -- building samples ----------------------------------------------------------------------------------------------

_unmapped_warned: set[str] = set()


@runtime_checkable
class AnnotationMapper(Protocol):
    """A transform that also says where its output puts the original's boxes and pixels (:class:`ImageTransform`)."""

    def map_boxes(self, boxes: np.ndarray, orig_size: Sequence[int]) -> np.ndarray: ...

    def map_mask(self, mask: np.ndarray, orig_size: Sequence[int] | None = None) -> np.ndarray: ...


def make_sample(
    image: Image.Image,
    transform: Callable[[Image.Image], Any],
    *,
    index: int,
    path: str,
    label: int | None = None,
    boxes: np.ndarray | None = None,
    box_labels: np.ndarray | None = None,
    iscrowd: np.ndarray | None = None,
    per_box: Mapping[str, Any] | None = None,
    dense: Mapping[str, np.ndarray] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply ``transform`` to ``image`` and map the annotations with it (see the module docstring for the keys).

    ``boxes`` are (K, 4) xyxy in original pixels; ``box_labels``, ``iscrowd`` and the ``per_box`` arrays have K rows;
    ``dense`` maps names to (H, W) arrays at the original size (integer ones become long tensors, float ones float).
    Annotations are mapped with the transform's ``map_boxes``/``map_mask`` (:class:`ImageTransform`); a transform
    without them is trusted only when it keeps the image size, otherwise the annotations are left out (logged once).
    """
    orig_w, orig_h = image.size
    tensor = transform(image)
    sample: dict[str, Any] = {"image": tensor, "index": int(index), "path": str(path), "orig_size": (orig_w, orig_h)}
    if label is not None:
        sample["label"] = int(label)
    out_hw = tuple(tensor.shape[-2:]) if isinstance(tensor, torch.Tensor) and tensor.ndim >= 2 else None
    mapper = transform if isinstance(transform, AnnotationMapper) else None  # isinstance: has both methods
    can_map = mapper is not None
    same_size = out_hw == (orig_h, orig_w)
    if not can_map and not same_size and (boxes is not None or dense):
        name = type(transform).__name__
        if name not in _unmapped_warned:
            _unmapped_warned.add(name)
            logger.warning("transform %s resizes but has no map_boxes/map_mask: annotations dropped", name)
        return {**sample, **(extra or {})}

    if boxes is not None:
        raw = np.asarray(boxes, np.float32).reshape(-1, 4)
        mapped = mapper.map_boxes(raw, (orig_w, orig_h)) if mapper is not None else raw
        keep = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])  # (K,) not cropped away
        sample["boxes"] = torch.from_numpy(np.ascontiguousarray(mapped[keep], np.float32))
        keep_t = torch.from_numpy(keep)
        if box_labels is not None:
            sample["box_labels"] = torch.as_tensor(np.asarray(box_labels, np.int64).reshape(-1))[keep_t]
        if iscrowd is not None:
            sample["iscrowd"] = torch.as_tensor(np.asarray(iscrowd).astype(bool).reshape(-1))[keep_t]
        for key, values in (per_box or {}).items():
            sample[key] = torch.as_tensor(values)[keep_t]
    for key, arr in (dense or {}).items():
        values = np.asarray(arr)
        mapped_arr = mapper.map_mask(values, (orig_w, orig_h)) if mapper is not None else values
        dtype = np.float32 if np.issubdtype(values.dtype, np.floating) else np.int64
        sample[key] = torch.from_numpy(np.ascontiguousarray(mapped_arr, dtype=dtype))
    if extra:
        sample.update(extra)
    return sample


# -- collation -----------------------------------------------------------------------------------------------------


def collate(batch: Sequence[dict[str, Any] | BadSample]) -> dict[str, Any]:
    """Batch sample dicts, dropping :class:`BadSample` markers.

    Returns a dict with ``bad``: list of (path, reason) of the dropped markers, and per sample key: a stacked tensor
    when every value is a tensor of the same shape and dtype (``image``, ``mask``, ``depth`` at a fixed size) or a
    number (``index``, ``label`` -> long/float/bool tensor), else a list (``path``, ``orig_size``, mixed-size images,
    and always the per-box fields of :data:`PER_BOX_KEYS`). A key missing from some samples becomes a list with
    ``None`` there. A batch of only bad files has ``index`` (empty long tensor), ``path`` ([]) and ``bad``.
    """
    good = [s for s in batch if not isinstance(s, BadSample)]
    out: dict[str, Any] = {"bad": [(s.path, s.reason) for s in batch if isinstance(s, BadSample)]}
    if not good:
        out["index"] = torch.zeros(0, dtype=torch.long)
        out["path"] = []
        return out
    keys: dict[str, None] = {}
    for sample in good:
        keys.update(dict.fromkeys(sample))
    for key in keys:
        values = [s.get(key) for s in good]
        out[key] = values if key in PER_BOX_KEYS else _collate_values(values)
    return out


def _collate_values(values: list[Any]) -> Any:
    if any(v is None for v in values):
        return values
    first = values[0]
    if isinstance(first, torch.Tensor):
        if all(isinstance(v, torch.Tensor) and v.shape == first.shape and v.dtype == first.dtype for v in values):
            return torch.stack(values)
        return values
    if all(isinstance(v, bool | np.bool_) for v in values):
        return torch.tensor([bool(v) for v in values], dtype=torch.bool)
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.long)
    if all(isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) for v in values):
        return torch.tensor([float(v) for v in values], dtype=torch.float32)
    return values


# -- loading -------------------------------------------------------------------------------------------------------

_logged: set[str] = set()


def log_skipped(path: str, reason: str) -> None:
    """Log a skipped file at WARNING, once per path per process."""
    if path not in _logged:
        _logged.add(path)
        logger.warning("skipping bad image %s: %s", path, reason)


class _Guarded(Dataset):
    """Turns ``BadImageError`` raised by a dataset (e.g. a strict one) into :class:`BadSample` markers, so that errors
    cross worker processes as data and :class:`SkippingLoader` can raise them, with their type, in the main process."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        try:
            return self.dataset[index]
        except BadImageError as exc:
            return BadSample(exc.path, exc.reason, int(index))

    def __getattr__(self, name: str) -> Any:
        # Forward attributes (classes, cfg, num_classes, ...) to the wrapped dataset; "dataset" itself must not
        # recurse while unpickling in a worker, before __dict__ is restored.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class SkippingLoader(DataLoader):
    """A DataLoader whose batches come from :func:`collate`; iterating it logs each skipped file once, records it in
    ``skipped`` ({path: reason}, kept across epochs) and, if ``strict``, raises ``BadImageError`` for the first one.

    ``loader.dataset`` is a thin wrapper; the dataset passed in is ``loader.source``.
    """

    def __init__(self, dataset: Dataset, *args: Any, strict: bool = False, **kwargs: Any):
        super().__init__(_Guarded(dataset), *args, **kwargs)
        self.source = dataset
        self.strict = strict
        self.skipped: dict[str, str] = {}

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        for batch in super().__iter__():
            for path, reason in batch.get("bad", ()) if isinstance(batch, dict) else ():
                if self.strict:
                    raise BadImageError(path, reason)
                log_skipped(path, reason)
                self.skipped.setdefault(path, reason)
            yield batch


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy/random seeds from it so that any random
    # augmentation is reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int = 32,
    *,
    strict: bool = False,
    num_workers: int = 0,
    sampler: Sampler[int] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> SkippingLoader:
    """A :class:`SkippingLoader` over ``dataset`` with :func:`collate`.

    ``strict`` (or ``dataset.strict``): stop with ``BadImageError`` naming the first bad file instead of skipping.
    ``sampler``: e.g. a ``DistributedSampler(dataset, ...)`` built by the caller for multi-process runs (call its
    ``set_epoch`` yourself); it excludes ``shuffle``. ``shuffle`` order depends only on ``seed``.
    """
    if sampler is not None and shuffle:
        raise ValueError("pass either a sampler or shuffle=True, not both (shuffle inside the sampler instead)")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return SkippingLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=generator,
        strict=strict or bool(getattr(dataset, "strict", False)),
    )


def iterate_batches(
    loader: Any,
    skipped: list[tuple[str, str]] | None = None,
    *,
    strict: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield the non-empty batches of ``loader``, appending each skipped (path, reason) to ``skipped``.

    Works with :func:`make_loader`'s loaders (which log and apply their own ``strict``) and with any iterable of
    :func:`collate` batches (then bad files are logged here, and ``strict`` raises on the first).
    """
    own = isinstance(loader, SkippingLoader)
    for batch in loader:
        bad = batch.get("bad", []) if isinstance(batch, dict) else []
        if not own:
            for path, reason in bad:
                if strict:
                    raise BadImageError(path, reason)
                log_skipped(path, reason)
        if skipped is not None:
            skipped.extend(bad)
        index = batch.get("index") if isinstance(batch, dict) else None
        if index is not None and len(index) == 0:
            continue
        yield batch
