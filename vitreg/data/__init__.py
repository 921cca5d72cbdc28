"""Data layer: robust image loading, geometry-aware transforms, synthetic scenes, datasets, SRC resolution, loaders.

Exports are loaded on first use (see :mod:`vitreg._lazy`): ``vitreg.data.scenes`` imports without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vitreg._lazy import lazy_exports

if TYPE_CHECKING:
    from vitreg.data.datasets import ArrayDataset, CocoDataset, ImageFiles, ImageFolder, scan_images
    from vitreg.data.images import IMAGE_EXTENSIONS, NEUTRAL_BACKGROUND, is_image_file, load_image
    from vitreg.data.loader import BadSample, SkippingLoader, collate, iterate_batches, make_loader, make_sample
    from vitreg.data.scenes import SHAPES, TASKS, SceneConfig, Task, register_task
    from vitreg.data.sources import ACCEPTED_SOURCES, bundled_photo_paths, open_source
    from vitreg.data.synthetic import Scene, SyntheticScenes, render_arrays, render_scene
    from vitreg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Geometry, ImageTransform, denormalize
    from vitreg.errors import BadImageError, DataFormatError

_EXPORTS = {
    "ACCEPTED_SOURCES": "sources",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "IMAGE_EXTENSIONS": "images",
    "NEUTRAL_BACKGROUND": "images",
    "SHAPES": "scenes",
    "TASKS": "scenes",
    "ArrayDataset": "datasets",
    "BadImageError": "vitreg.errors",
    "BadSample": "loader",
    "CocoDataset": "datasets",
    "DataFormatError": "vitreg.errors",
    "Geometry": "transforms",
    "ImageFiles": "datasets",
    "ImageFolder": "datasets",
    "ImageTransform": "transforms",
    "Scene": "synthetic",
    "SceneConfig": "scenes",
    "SkippingLoader": "loader",
    "SyntheticScenes": "synthetic",
    "Task": "scenes",
    "bundled_photo_paths": "sources",
    "collate": "loader",
    "denormalize": "transforms",
    "is_image_file": "images",
    "iterate_batches": "loader",
    "load_image": "images",
    "make_loader": "loader",
    "make_sample": "loader",
    "open_source": "sources",
    "register_task": "scenes",
    "render_arrays": "synthetic",
    "render_scene": "synthetic",
    "scan_images": "datasets",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
