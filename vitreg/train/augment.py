"""Batched augmentation on uint8 image batches: random resized crop + flip, 3-Augment, colour jitter, normalise.

Everything is a tensor op over the whole batch (B, 3, H, W) driven by one ``torch.Generator``, so the randomness of
step ``t`` is a pure function of the generator's seed: resuming a run replays exactly the same augmentations.
3-Augment (DeiT-III) picks one of grayscale / solarize / Gaussian blur per image; colour jitter follows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class AugmentConfig:
    rrc_scale: float = 1.0  # minimum crop area fraction; 1.0 = no crop
    hflip: float = 0.5
    three_augment: bool = True
    color_jitter: float = 0.3
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device | None = None) -> torch.Tensor:
    """Drawn on the CPU generator (so a step's randomness is the same on every device), then moved to ``device``."""
    return (lo + (hi - lo) * torch.rand(n, generator=g)).to(device or "cpu")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def crop_flip(x: torch.Tensor, scale_min: float, hflip: float, g: torch.Generator) -> torch.Tensor:
    """Random resized crop (area in [scale_min, 1], aspect in [3/4, 4/3]) and horizontal flip, as one affine
    resampling of the batch. x: (B, 3, H, W)."""
    b = x.shape[0]
    flip = torch.rand(b, generator=g) < hflip
    if scale_min >= 1.0:
        if not hflip:
            return x
        return torch.where(flip.to(x.device).view(b, 1, 1, 1), x.flip(-1), x)
    area = _uniform(b, scale_min, 1.0, g)
    ratio = torch.exp(_uniform(b, math.log(3 / 4), math.log(4 / 3), g))
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop size as a fraction of the image
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(b, generator=g) - 1)  # crop centre in [-1, 1] coordinates, crop inside the image
    cy = (1 - h) * (2 * torch.rand(b, generator=g) - 1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -w, w)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable blur with a per-image sigma (B,): one grouped convolution over all B*3 channels."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    radius = min(radius, (min(h, w) - 1) // 2) or 1
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.to(x.device).view(-1, 1) ** 2))  # (B, K)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*3, K)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


def three_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One of grayscale / solarize / blur per image (DeiT-III). Blur sigma is U(0.1, 2) at 224 px, scaled to the
    image size so a 32 px scene is not wiped out."""
    b, _, h, _ = x.shape
    choice = torch.randint(0, 3, (b,), generator=g).to(x.device).view(b, 1, 1, 1)
    sigma = _uniform(b, 0.1, 2.0, g) * max(h / 224, 0.1)
    sigma = sigma.clamp(min=0.1)
    gray = grayscale(x).expand_as(x)
    solar = torch.where(x >= 0.5, 1.0 - x, x)
    blur = gaussian_blur(x, sigma)
    return torch.where(choice == 0, gray, torch.where(choice == 1, solar, blur))


def color_jitter(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1 - s, 1 + s] per image (fixed order, batched)."""
    b = x.shape[0]
    bright, contrast, sat = (_uniform(b, 1 - strength, 1 + strength, g, x.device).view(b, 1, 1, 1) for _ in range(3))
    x = (x * bright).clamp(0, 1)
    mean = grayscale(x).mean((2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    gray = grayscale(x)
    return ((x - gray) * sat + gray).clamp(0, 1)


def augment(images: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> augmented, normalised float (B, 3, H, W)."""
    x = to_float(images)
    x = crop_flip(x, cfg.rrc_scale, cfg.hflip, g)
    if cfg.three_augment:
        x = three_augment(x, g)
    if cfg.color_jitter > 0:
        x = color_jitter(x, cfg.color_jitter, g)
    return normalize(x, cfg.mean, cfg.std)


def prepare_eval(images: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W), no randomness."""
    return normalize(to_float(images), cfg.mean, cfg.std)
