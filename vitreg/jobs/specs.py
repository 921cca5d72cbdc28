"""The pieces every job config shares: which model (:class:`ModelSpec`), which images (:class:`ImageSpec`) and how
to run (:class:`Runtime`). Plain dataclasses, saved in every run directory's config and digested by the stage
cache; building a model or a dataset happens only when a job runs."""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.data.scenes import SceneConfig
from vitreg.errors import ConfigError

if TYPE_CHECKING:
    import torch


def parse_size(text: str | int | tuple[int, int] | list[int] | None) -> int | tuple[int, int] | None:
    """``224`` or ``"224"`` -> 224, ``"224x320"`` (H x W) -> (224, 320); a bad value is a ConfigError."""
    if text is None or isinstance(text, int):
        return text
    if isinstance(text, tuple | list):
        if len(text) != 2:
            raise ConfigError(f"an image size is H or HxW, got {text!r}")
        return int(text[0]), int(text[1])
    parts = str(text).lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"an image size is H or HxW (e.g. 224 or 224x320), got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise ConfigError(f"an image size is H or HxW with positive numbers, got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def parse_subset(text: str) -> slice:
    """``"START:STOP:STEP"`` (Python's slice, any part empty) -> a slice; a ConfigError naming the value otherwise."""
    parts = str(text).split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise ConfigError(f"--subset {text!r}: expected START:STOP:STEP, e.g. 0::2 (even images) or 1::2") from None
    if len(values) == 3 and values[2] is not None and values[2] < 1:
        raise ConfigError(f"--subset {text!r}: the step must be >= 1")
    return slice(*values)


@dataclass(kw_only=True)
class ModelSpec:
    """A model to load: a preset, ``timm:NAME``, a DINOv2 name, a weights file or a run directory."""

    spec: str
    weights: str | None = None
    registers: int | None = None
    img_size: int | tuple[int, int] | None = None  # H or (H, W); the position embedding is resampled
    random_init: bool = False  # random weights on purpose (a named model never falls back to them silently)
    download: bool = False  # fetch a named model's published weights into the ecosystem's cache when missing
    test_time_registers: str | None = None  # a `vitreg fix` neurons.json (or its run directory) to apply
    weights_key: str | None = None  # the key of a training checkpoint to take the weights from (model, model_ema, ...)

    @property
    def label(self) -> str:
        """How reports name this model: the spec, and what was changed from it."""
        parts = [self.spec]
        if self.weights:
            parts.append(f"({Path(self.weights).name}{':' + self.weights_key if self.weights_key else ''})")
        if self.registers is not None:
            parts.append(f"+{self.registers} reg")
        if self.img_size is not None:
            h, w = (self.img_size, self.img_size) if isinstance(self.img_size, int) else self.img_size
            parts.append(f"@{h}x{w}")
        if self.random_init and not Path(self.spec).exists():  # a file or run directory has its own weights
            parts.append("(random init)")
        if self.test_time_registers:
            parts.append("+test-time registers")
        return " ".join(parts)

    def check(self) -> None:
        """Fail now, naming the file or flag, if :meth:`load` would fail for a missing file or unknown name."""
        from vitreg.models.load.checkpoints import check_model

        check_model(self.spec, **self._load_args())
        if self.test_time_registers:
            from vitreg.results.fix import read_neurons

            read_neurons(self.test_time_registers)

    def _load_args(self) -> dict[str, Any]:
        return dict(weights=self.weights, registers=self.registers, img_size=self.img_size,
                    random_init=self.random_init, download=self.download, weights_key=self.weights_key)  # fmt: skip

    def start(self, runtime: Runtime) -> tuple[torch.nn.Module, torch.device, torch.dtype | None]:
        """Check the model, set up ``runtime`` and load the model on its device: (model, device, autocast dtype)."""
        self.check()
        device, dtype = runtime.start()
        return self.load(device), device, dtype

    def load(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The model in eval mode on ``device``."""
        from vitreg.models.load.checkpoints import load_model

        model = load_model(self.spec, **self._load_args())
        if self.test_time_registers:
            from vitreg.models.ttr import add_test_time_registers
            from vitreg.results.fix import read_neurons

            neurons = read_neurons(self.test_time_registers)
            model = add_test_time_registers(model, neurons.selected, neurons.registers)
        return model.eval().to(device)


@dataclass(kw_only=True)
class ImageSpec:
    """Images to run over. ``src``: a folder, a COCO JSON, a .txt list, a .npz, ``synthetic[:options]`` or
    ``photos``; ``scenes``: the base scene options of ``synthetic`` (the SRC's own options override them)."""

    src: str = "synthetic"
    scenes: SceneConfig | None = None
    limit: int | None = None
    subset: str | None = None  # "START:STOP:STEP" of the source's images (e.g. "0::2", "1::2": two disjoint halves)
    batch_size: int = 32
    strict: bool = False  # stop at the first bad image instead of skipping it
    workers: int = 0
    # how a photo becomes the model's input: "model" (its own processor), "squash", "crop", "keep-aspect"
    resize: str = "model"

    def validate(self) -> None:
        from vitreg.models.processor import check_resize

        check_resize(self.resize, "img_size")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.subset is not None:
            parse_subset(self.subset)

    def open(self, transform: Any, seed: int = 0) -> Any:
        """The dataset (see :func:`vitreg.data.sources.open_source`): ``subset`` first, then at most ``limit``."""
        from vitreg.data.sources import open_source

        if self.subset is None:
            return open_source(self.src, transform, limit=self.limit, strict=self.strict, seed=seed,
                               synthetic=self.scenes)  # fmt: skip
        ds = open_source(self.src, transform, limit=None, strict=self.strict, seed=seed, synthetic=self.scenes)
        assert isinstance(ds, Sized)  # every source knows its length (torch's Dataset type does not say so)
        chosen = list(range(len(ds)))[parse_subset(self.subset)][: self.limit]
        if hasattr(ds, "subset"):
            return ds.subset(chosen)
        from torch.utils.data import Subset

        return Subset(ds, chosen)

    def transform(self, model: torch.nn.Module) -> Any:
        """How the images are prepared for ``model``: at its own size, mean and std, by its own processor or the
        geometry ``resize`` names (an ImageTransform: its ``describe()`` goes into every result)."""
        from vitreg.data.transforms import ImageTransform

        return ImageTransform.for_model(model, self.resize)

    def batches(self, model: torch.nn.Module, seed: int = 0) -> Any:
        """A loader over the images prepared for ``model`` (:meth:`transform`)."""
        return self.loader(self.open(self.transform(model), seed=seed))

    def loader(self, dataset: Any) -> Any:
        from vitreg.data.loader import make_loader

        return make_loader(dataset, self.batch_size, strict=self.strict, num_workers=self.workers)


@dataclass(kw_only=True)
class Runtime:
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    precision: str = "auto"  # auto (fp32 for inference: bf16 moves outliers; vitreg.device.inference_dtype), bf16, ...
    threads: int | None = None  # CPU threads (None: every core available)
    seed: int = 0

    def validate(self) -> None:
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"--precision {self.precision!r}: allowed auto, bf16, fp16, fp32")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")

    def start(self) -> tuple[torch.device, torch.dtype | None]:
        """Set threads and seed; the device and autocast dtype to run on."""
        import torch

        from vitreg.device import inference_dtype, resolve_device, set_threads

        set_threads(self.threads)
        torch.manual_seed(self.seed)
        device = resolve_device(self.device)
        return device, inference_dtype(self.precision, device)  # auto: fp32 (see inference_dtype)
