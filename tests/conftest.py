from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on a 2-core machine: one thread each (and for the processes a test starts),
    # else every matrix product competes with the other worker's
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

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


def quick_args(run: Path) -> list[str]:
    """`vitreg reproduce --quick` into ``run``, Part I on the planted-neuron model saved beside it by quick_run."""
    planted = run.parent / "planted"
    return ["reproduce", "--quick", "--coco", "none", "--released-model", str(planted), "--out", str(run)]


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> tuple[Path, str]:
    """One real `vitreg reproduce --quick` (every stage, tiny models), shared by the end-to-end and browser tests.
    Part I's released model is a pico ViT with a planted register neuron (tests/test_ttr.py), so that Part I finds
    one, moves it and measures the result on other images, in seconds; the released CLIP is tests/test_real_clip.py's.
    """
    import contextlib
    import io

    from test_ttr import planted_model

    from vitreg.cli import main
    from vitreg.models import save_model

    out = tmp_path_factory.mktemp("reproduce")
    save_model(planted_model(), out / "planted")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(quick_args(out / "run"))
    (out / "stdout.txt").write_text(buf.getvalue())
    assert rc == 0, buf.getvalue()[-3000:]
    return out / "run", buf.getvalue()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that share the session's reproduce run go to one worker (``--dist loadgroup``), so it runs once."""
    for item in items:
        if "quick_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("quick_run"))


@pytest.fixture
def connections(monkeypatch):
    """Every address this process tries to connect a socket to, in order: evidence of how often a download is
    tried (and that a lookup tries none) without timing anything."""
    import socket

    seen: list[object] = []
    real = socket.socket.connect

    def connect(self: socket.socket, address: tuple[str, int] | str) -> None:  # (host, port), or a socket path
        seen.append(address)
        real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen
