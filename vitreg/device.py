"""Device, dtype and autocast resolution in one place; library code receives a device, never calls .cuda()."""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache

import torch

from vitreg.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 is much faster."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@lru_cache(maxsize=1)
def cpu_description() -> dict[str, object]:
    """This machine's CPU: model name, cores and the vector flags that decide its speed (for provenance)."""
    name, flags = "unknown", set[str]()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown":
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
    return {"model": name, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags],
            "native_bf16": cpu_has_bf16()}  # fmt: skip


def cpu_line() -> str:
    """The CPU in words, for benchmark output: model, cores this process may use, and whether it has native bf16."""
    d = cpu_description()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else d["cores"]
    return f"{d['model']}, {cores} cores, {'with' if d['native_bf16'] else 'no'} AVX512-BF16"


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``name`` in {auto, bf16, fp16, fp32}; None means plain fp32 (no autocast)."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if name != "auto":
        raise ConfigError(f"unknown precision {name!r}; allowed: auto, bf16, fp16, fp32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def inference_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of an inference job (diagnose, fix, inspect, lost, probe): ``auto`` is fp32 (None) on every
    device; ``bf16`` / ``fp16`` autocast only when asked for.

    Why not bf16 where the CPU has it, as training does: the high-norm tokens are decided by small differences (a
    few patches compete for the artifact), and on a released model with the paper's artifacts bf16 autocast changed
    *which* patch tokens are outliers, not just their norms: ``bench/diagnose_clip.py`` measures the Jaccard index of
    the outlier token sets under bf16 and fp32 (each with its own threshold, diagnose's own procedure) and the rule
    for bf16 was Jaccard >= 0.99, which OpenAI's CLIP ViT-B/16 on coco-mini does not reach."""
    if name == "auto":
        resolve_dtype(name, device)  # the same check of the name
        return None
    return resolve_dtype(name, device)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for ``dtype`` on ``device``, or a no-op when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_threads(num: int | None = None) -> int:
    """Use every core this process may run on (or ``num``) for intra-op work; returns the count."""
    if num is None:
        env = os.environ.get("OMP_NUM_THREADS")
        num = int(env) if env else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    num = max(1, int(num or 1))
    torch.set_num_threads(num)
    return num
