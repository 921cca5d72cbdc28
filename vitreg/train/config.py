"""TrainConfig: every knob of `vitreg train`, each overridable as ``key=value`` (nested: ``data.scene.task=count``).

The dataclass defaults are the embedded default run: a tiny ViT on generated scenes, seconds per hundred steps on
two CPU cores. ``batch_size`` is the GLOBAL batch: under torchrun each of K ranks gets ``batch_size / K`` images, so
a run means the same thing whatever the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from vitreg.config import load_config
from vitreg.data.scenes import SceneConfig
from vitreg.errors import ConfigError


def _default_scene() -> SceneConfig:
    # the tiny default model learns colour in seconds; "shape" needs a larger model
    return SceneConfig(task="color")


@dataclass
class DataConfig:
    """Where training images come from. ``synthetic`` renders scenes of ``scene`` (:mod:`vitreg.data.synthetic`)
    once into a uint8 array cache: train indices ``0 .. train_size-1``, held-out indices from ``eval_start`` on (a
    disjoint range); ``scene.img_size`` is replaced by the model's input size. ``folder`` reads
    ``path/<class>/<image>`` (labels from sub-folders), ``npz`` a CIFAR-style file with ``images`` (N, H, W, 3)
    uint8 and ``labels`` (N,); both hold out ``eval_fraction`` of the images (shuffled with ``seed``) unless
    ``eval_path`` names a separate source of the same kind."""

    kind: Literal["synthetic", "device", "folder", "npz"] = "synthetic"  # device: scenes rendered on the GPU
    path: str = ""
    eval_path: str = ""
    eval_fraction: float = 0.1
    train_size: int = 4096
    eval_size: int = 512
    eval_start: int = 1_000_000
    scene: SceneConfig = field(default_factory=_default_scene)  # synthetic only: data.scene.task=count, ...
    seed: int = 0  # the shuffle that picks a held-out split of a folder or array file

    def validate(self) -> None:
        if self.kind in ("folder", "npz") and not self.path:
            raise ConfigError(f"data.kind={self.kind} needs data.path")
        if self.train_size < 1 or self.eval_size < 1:
            raise ConfigError("data.train_size and data.eval_size must be >= 1")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction={self.eval_fraction} must be in (0, 1)")
        if self.kind == "synthetic" and self.eval_start < self.train_size:
            raise ConfigError(
                f"data.eval_start={self.eval_start} overlaps the training scenes 0..{self.train_size - 1}; "
                "held-out scenes must come from a different index range"
            )


@dataclass
class TrainConfig:
    """The resolved config of one training run (saved as config.yaml in its directory)."""

    # Model (vitreg.models presets; registers may list several values: one run directory each).
    model: str = "vit_pico_patch4_32"
    registers: list[int] = field(default_factory=lambda: [0])
    img_size: int | None = None  # None = the preset's
    global_pool: Literal["token", "avg", "map"] = "token"  # map: attention pooling (timm), e.g. without [CLS]
    class_token: bool = True
    init_values: float | None = 1e-4  # LayerScale init (DeiT-III); None = no LayerScale
    # Architecture overrides of the preset (None = the preset's): lets a search vary depth and width.
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    drop_path: float = 0.0
    # Objective and schedule (DeiT-III recipe, reproducibility study Table 3).
    loss: Literal["bce", "ce"] = "bce"
    label_smoothing: float = 0.0
    opt: Literal["lamb", "adamw"] = "lamb"
    lr: float = 4e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_steps: int = 20
    weight_decay: float = 0.05
    grad_clip: float = 0.0  # 0 = off
    steps: int = 500
    batch_size: int = 64  # GLOBAL batch (all ranks together)
    # Augmentation (batched tensor ops on the uint8 cache).
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    three_augment: bool = False  # DeiT-III uses it (deit3_small preset); its grayscale erases a colour label
    color_jitter: float = 0.3
    rrc_scale: float = 1.0  # random resized crop: minimum area fraction; 1.0 = off (DeiT-III uses simple crops)
    hflip: float = 0.5
    repeated_aug: int = 1  # each image appears this many times per global batch (DeiT-III: 3); 1 = off
    data: DataConfig = field(default_factory=DataConfig)
    # Runtime.
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    threads: int | None = None
    compile: bool = False
    # "auto": timm's explicit attention (q k^T softmax v as matmuls) for training on CPU, where the fused SDPA
    # kernel's backward is several times slower on short sequences; the fused kernel on GPUs.
    fused_attn: Literal["auto", "on", "off"] = "auto"
    progress: bool = True
    # Tracking, evaluation, checkpoints (steps).
    log_every: int = 10
    track_every: int = 50
    track_batch: int = 64
    eval_every: int = 100
    checkpoint_every: int = 50
    keep_steps: list[int] = field(default_factory=list)
    keep_every: int = 0  # 0 = off

    def validate(self) -> None:
        if not self.registers:
            raise ConfigError("registers must list at least one value, e.g. registers=0,4")
        if len(set(self.registers)) != len(self.registers):
            raise ConfigError(f"registers={self.registers} repeats a value")
        for n in self.registers:
            if not 0 <= n <= 16:
                raise ConfigError(f"registers={n} is not allowed; allowed values: 0..16")
        positive = dict(steps=self.steps, batch_size=self.batch_size, log_every=self.log_every)
        positive.update(track_every=self.track_every, eval_every=self.eval_every, repeated_aug=self.repeated_aug)
        positive.update(checkpoint_every=self.checkpoint_every, track_batch=self.track_batch)
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key}={value} must be >= 1")
        if self.warmup_steps < 0 or self.keep_every < 0:
            raise ConfigError("warmup_steps and keep_every must be >= 0")
        if not 0.0 < self.rrc_scale <= 1.0:
            raise ConfigError(f"rrc_scale={self.rrc_scale} must be in (0, 1]")
        if not 0.0 <= self.hflip <= 1.0 or not 0.0 <= self.mixup_prob <= 1.0:
            raise ConfigError("hflip and mixup_prob are probabilities in [0, 1]")
        if min(self.mixup, self.cutmix, self.color_jitter, self.drop_path, self.lr, self.weight_decay) < 0:
            raise ConfigError("mixup, cutmix, color_jitter, drop_path, lr and weight_decay must be >= 0")
        if not self.class_token and self.global_pool == "token":
            raise ConfigError("class_token=false needs global_pool=avg or map (a [CLS] head needs a [CLS] token)")


def packaged_configs() -> list[str]:
    """Names of the preset configs shipped in vitreg/configs (usable as ``--config NAME``)."""
    root = resources.files("vitreg") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(name: str | None) -> Path | None:
    """A file path as given, or a packaged preset name (``deit3_small``) -> its YAML file."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return path
    packaged = Path(str(resources.files("vitreg") / "configs" / f"{name}.yaml"))
    if packaged.is_file():
        return packaged
    raise ConfigError(f"config {name!r} is neither a file nor a packaged config ({', '.join(packaged_configs())})")


def load_train_config(config: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML (a file or a packaged name) <- ``key=value`` overrides, validated before any work."""
    return load_config(TrainConfig, resolve_config_path(config), overrides or [])
