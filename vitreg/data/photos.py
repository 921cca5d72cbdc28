"""Natural photos bundled with installed packages (scikit-image, scikit-learn, matplotlib): the ``photos`` SRC of
:mod:`vitreg.data.sources` and the photo backgrounds of :mod:`vitreg.data.synthetic`. Nothing is downloaded; only
files present on disk are used. Its own module so that both can use it without importing each other."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["PHOTO_FILES", "bundled_photo_paths"]

# Natural photographs among the sample data of installed packages: (package, folder inside it, file names).
# Listed by name because those folders also hold drawings, logos, checkerboards, phantoms, text scans, animated GIFs
# and non-image files that are no use for studying natural-image token statistics.
PHOTO_FILES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "skimage",
        ("data",),
        (
            "astronaut.png",
            "chelsea.png",
            "coffee.png",
            "rocket.jpg",
            "motorcycle_left.png",
            "hubble_deep_field.jpg",
            "retina.jpg",
            "camera.png",
            "coins.png",
            "moon.png",
            "brick.png",
            "grass.png",
            "gravel.png",
        ),
    ),
    ("sklearn", ("datasets", "images"), ("china.jpg", "flower.jpg")),
    ("matplotlib", ("mpl-data", "sample_data"), ("grace_hopper.jpg",)),
)


def _package_dir(name: str) -> Path | None:
    # find_spec locates a top-level package without importing it (importing matplotlib costs ~0.5 s).
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_photo_paths() -> list[Path]:
    """Paths of the natural photos in :data:`PHOTO_FILES` that exist in the installed packages (never downloads)."""
    paths = []
    for package, folder, names in PHOTO_FILES:
        base = _package_dir(package)
        if base is None:
            continue
        for name in names:
            path = base.joinpath(*folder, name)
            if path.is_file() and path.stat().st_size > 0:
                paths.append(path)
    return paths
