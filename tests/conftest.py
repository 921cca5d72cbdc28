from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO_MINI = SHARED / "data" / "coco-mini"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny probes run faster on one thread than on an oversubscribed pair of cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def coco_mini() -> Path:
    if not (COCO_MINI / "annotations" / "instances_train2017.json").is_file():
        pytest.skip("../shared/data/coco-mini is not present")
    return COCO_MINI
