"""torch.distributed in one place: init from torchrun's environment, rank helpers, and sum-merging of statistics.

Library code asks ``get_rank()`` / ``is_main()``; it never assumes a launcher. gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


def launched_with_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device: torch.device | None = None) -> bool:
    """Initialise the process group when run under torchrun (WORLD_SIZE > 1); returns whether it is active."""
    if dist.is_available() and dist.is_initialized():
        return True
    if not launched_with_torchrun():
        return False
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=10))
    return True


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_active() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_active():
        dist.barrier()


def all_reduce_sum(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Sum an array over ranks (histograms and counts add). float64 keeps counts exact; a no-op without torchrun."""
    if not is_active():
        return x
    if isinstance(x, np.ndarray):
        t = torch.as_tensor(x).to(torch.float64 if x.dtype.kind == "f" else torch.int64)
        return _all_sum(t).numpy().astype(x.dtype)
    return _all_sum(x.to(torch.float64)).to(x.dtype)


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` (small Python objects only: summaries, reservoirs), in rank order."""
    if not is_active():
        return [obj]
    out: list[object] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if is_active():
        dist.destroy_process_group()
