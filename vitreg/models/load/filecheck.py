"""Checks a weights file passes before a library reads it: what the bytes claim is compared with what the file holds
(and the file's sha256, which downloads and zoo entries are checked against).

A safetensors file starts with the 8-byte length of its JSON header; a file that lies about it (a length past the
end of the file, or beyond what any header needs) is refused here, before anything is allocated for it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vitreg.errors import CheckpointError

#: the largest header the safetensors library itself accepts (100 MB); real headers are a few hundred KB at most
MAX_HEADER_BYTES = 100_000_000


def check_safetensors_header(path: Path) -> None:
    """CheckpointError naming ``path`` when its header length cannot be right for a file of its size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None
    if len(head) < 8:
        raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, shorter than the header length)")
    claimed = int.from_bytes(head, "little")
    if claimed > size - 8:
        raise CheckpointError(
            f"{path}: damaged safetensors file: the header claims {claimed} bytes, the file has {size - 8} after it"
        )
    if claimed > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: refused: a {claimed}-byte safetensors header (at most {MAX_HEADER_BYTES})")


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
