"""Data layer: robust image loading, geometry-aware transforms, synthetic scenes, datasets, SRC resolution, loaders.

Exports are loaded on first use (see :mod:`vitreg._lazy`): ``vitreg.data.scenes`` imports without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vitreg._lazy import lazy_exports

if TYPE_CHECKING:
    from vitreg.data.datasets import ArrayDataset, CocoDataset, ImageFiles, ImageFolder, scan_images
    from vitreg.data.images import IMAGE_EXTENSIONS, NEUTRAL_BACKGROUND, is_image_file, load_image
    from vitreg.data.loader import BadSample, SkippingLoader, collate, iterate_batches, make_loader, make_sample
    from vitreg.data.photos import bundled_photo_paths
    from vitreg.data.scenes import SHAPES, TASKS, SceneConfig, Task, register_task
    from vitreg.data.sources import ACCEPTED_SOURCES, open_source
    from vitreg.data.synthetic import Scene, SyntheticScenes, render_arrays, render_scene
    from vitreg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Geometry, ImageTransform, denormalize
    from vitreg.errors import BadImageError, DataFormatError

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "datasets": "ArrayDataset CocoDataset ImageFiles ImageFolder scan_images",
        "images": "IMAGE_EXTENSIONS NEUTRAL_BACKGROUND is_image_file load_image",
        "loader": "BadSample SkippingLoader collate iterate_batches make_loader make_sample",
        "scenes": "SHAPES SceneConfig TASKS Task register_task",
        "photos": "bundled_photo_paths",
        "sources": "ACCEPTED_SOURCES open_source",
        "synthetic": "Scene SyntheticScenes render_arrays render_scene",
        "transforms": "Geometry IMAGENET_MEAN IMAGENET_STD ImageTransform denormalize",
        "vitreg.errors": "BadImageError DataFormatError",
    },
)
