"""Resolve a SRC string (what the CLI's ``--src`` takes) into a dataset.

Accepted forms, tried in this order:

* ``synthetic`` or ``synthetic:task=count,img_size=96,n=500``: procedural scenes (:mod:`vitreg.data.synthetic`);
  options are :class:`SceneConfig` fields plus ``n`` (number of scenes, default 1024);
* ``photos``: natural photos shipped inside installed packages (scikit-image, scikit-learn, matplotlib); nothing is
  downloaded, only files present on disk are used;
* a folder (recursive, :class:`ImageFolder`), a COCO instances ``.json``, a ``.txt`` listing image paths (one per
  line, ``#`` comments, relative to the list's folder), a ``.npz`` with ``images``/``labels``, or one image file.

The keywords win over a file or folder of the same name; write ``./synthetic`` for the folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from vitreg.data.datasets import ArrayDataset, CocoDataset, DataFormatError, ImageFiles, ImageFolder
from vitreg.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, is_image_file
from vitreg.data.photos import PHOTO_FILES, bundled_photo_paths
from vitreg.data.scenes import SceneConfig, parse_scene_options, split_options
from vitreg.data.synthetic import SyntheticScenes
from vitreg.errors import DataError

__all__ = ["ACCEPTED_SOURCES", "DEFAULT_SYNTHETIC_N", "PHOTO_FILES", "bundled_photo_paths", "open_source"]

ACCEPTED_SOURCES = (
    '"synthetic" (or "synthetic:task=count,img_size=96,n=500"), "device-scenes" (the scenes of data kind device), '
    '"photos" (photos bundled with installed packages), '
    "a folder of images, a COCO instances .json, a .txt listing image paths, a .npz with images/labels arrays, "
    "or a single image file"
)

DEFAULT_SYNTHETIC_N = 1024


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, f"cannot read image list: {exc}") from None
    out = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        item = Path(entry).expanduser()
        out.append(item if item.is_absolute() else path.parent / item)
    return out


def _limit(dataset: Any, limit: int | None, seed: int) -> Any:
    """At most ``limit`` items: a seeded random subset kept in dataset order (sorted folders are often sorted by
    class, so the first N would all be one class). The subset for a smaller limit is contained in a larger one's."""
    if limit is None or limit >= len(dataset):
        return dataset
    order = np.random.default_rng(seed).permutation(len(dataset))
    return dataset.subset(sorted(int(i) for i in order[:limit]))


def _scenes(keyword: str, options: str, base: SceneConfig, limit: int | None, transform: Any) -> Dataset:
    """``synthetic[:options]`` (numpy scenes) or ``device-scenes[:options]`` (the scenes of data kind device,
    rendered here on the CPU); option ``n`` is the number of scenes, the others are scene options over ``base``."""
    opts = split_options(options)
    n_text = opts.pop("n", None)
    try:
        n = int(n_text) if n_text is not None else DEFAULT_SYNTHETIC_N
    except ValueError:
        raise DataError(f"bad value for {keyword} option n: {n_text!r}") from None
    cfg = parse_scene_options(opts, base)
    n = n if limit is None else min(n, limit)
    if keyword == "device-scenes":
        from vitreg.data.device_scenes import DeviceScenesDataset

        return DeviceScenesDataset(n, cfg, transform)
    return SyntheticScenes(n, cfg, transform)


def open_source(
    src: str,
    transform: Callable[[Image.Image], Any] | None = None,
    *,
    limit: int | None = None,
    strict: bool = False,
    seed: int = 0,
    synthetic: SceneConfig | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Dataset:
    """The dataset named by ``src`` (see the module docstring).

    ``transform``: PIL RGB -> tensor (each dataset's default when None: ImageNet normalisation, 224 px for files,
    ``img_size`` for scenes). ``limit``: at most this many images (scenes: the first ``limit``; files: a random subset
    chosen by ``seed``, in order). ``strict``: bad files raise ``BadImageError`` instead of being skipped.
    ``synthetic``: base config for "synthetic" (default ``SceneConfig(seed=seed)``; the SRC's options override it).
    Unknown or missing sources raise ``ValueError`` saying what is accepted; unusable description files raise
    :class:`DataFormatError` (a ``ValueError``) naming the file.
    """
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    text = str(src).strip()
    keyword, _, options = text.partition(":")
    keyword = keyword.strip().lower()

    if keyword in ("synthetic", "device-scenes"):
        base = synthetic if synthetic is not None else SceneConfig(seed=seed)
        return _scenes(keyword, options, base, limit, transform)

    if keyword == "photos" and not options:
        paths = bundled_photo_paths()
        if not paths:
            raise DataError("SRC 'photos': no photos found in scikit-image, scikit-learn or matplotlib")
        return _limit(ImageFiles(paths, transform, strict=strict, max_pixels=max_pixels), limit, seed)

    if not text:
        raise DataError(f"empty SRC; accepted: {ACCEPTED_SOURCES}")
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"SRC {src!r} is not a keyword nor an existing file or folder; accepted: {ACCEPTED_SOURCES}")
    common: dict[str, Any] = {"strict": strict, "max_pixels": max_pixels}
    dataset: Any
    if path.is_dir():
        dataset = ImageFolder(path, transform, **common)
        if len(dataset) == 0:
            raise DataError(f"{path}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    elif path.suffix.lower() == ".json":
        dataset = CocoDataset(path, transform, **common)
    elif path.suffix.lower() == ".txt":
        dataset = ImageFiles(_read_list(path), transform, **common)
    elif path.suffix.lower() == ".npz":
        dataset = ArrayDataset(path, transform, **common)
    elif is_image_file(path):
        dataset = ImageFiles([path], transform, **common)
    else:
        raise DataError(f"SRC {src!r}: unsupported file type {path.suffix or '(none)'}; accepted: {ACCEPTED_SOURCES}")
    return _limit(dataset, limit, seed)
