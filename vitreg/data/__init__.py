"""Data layer: robust image loading, geometry-aware transforms, synthetic scenes, datasets, SRC resolution, loaders."""

from vitreg.data.datasets import ArrayDataset, CocoDataset, DataFormatError, ImageFiles, ImageFolder, scan_images
from vitreg.data.errors import BadImageError
from vitreg.data.images import IMAGE_EXTENSIONS, NEUTRAL_BACKGROUND, is_image_file, load_image
from vitreg.data.loader import BadSample, SkippingLoader, collate, iterate_batches, make_loader, make_sample
from vitreg.data.sources import ACCEPTED_SOURCES, bundled_photo_paths, open_source
from vitreg.data.synthetic import (
    SHAPES,
    TASKS,
    Scene,
    SceneConfig,
    SyntheticScenes,
    Task,
    register_task,
    render_arrays,
    render_scene,
)
from vitreg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Geometry, ImageTransform, denormalize

__all__ = [
    "ACCEPTED_SOURCES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "NEUTRAL_BACKGROUND",
    "SHAPES",
    "TASKS",
    "ArrayDataset",
    "BadImageError",
    "BadSample",
    "CocoDataset",
    "DataFormatError",
    "Geometry",
    "ImageFiles",
    "ImageFolder",
    "ImageTransform",
    "Scene",
    "SceneConfig",
    "SkippingLoader",
    "SyntheticScenes",
    "Task",
    "bundled_photo_paths",
    "collate",
    "denormalize",
    "is_image_file",
    "iterate_batches",
    "load_image",
    "make_loader",
    "make_sample",
    "open_source",
    "register_task",
    "render_arrays",
    "render_scene",
    "scan_images",
]
