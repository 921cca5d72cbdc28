"""One writer per run directory: ``DIR/.vitreg.lock`` names the process that holds ``DIR`` while it writes there.

The lock is an advisory ``flock`` on that file, so the kernel drops it when the holder exits in any way (SIGKILL,
a crash, the machine's power): a dead holder never leaves the directory stuck, and no process id is trusted
after it may have been reused. The file holds the holder's pid, host, command and start time, which the refusal
message of a second process names. Under torchrun only rank 0 takes the lock; the other ranks of the same run
write nothing there.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitreg.errors import OutputError, RunLockedError

LOCK_NAME = ".vitreg.lock"

# Locks this process holds (resolved directory -> depth): a job called inside a command that already holds its
# directory (``vitreg diagnose`` holds it over the job and the report) goes on; a second flock would refuse it.
_HELD: dict[Path, int] = {}


def _holder_text(command: str) -> str:
    started = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), command=command, started=started))


NAME_WAIT_S = 5.0  # how long a refused process waits for a holder that has the lock but has not written its name


def _read_holder(path: Path) -> dict | None:
    try:
        info: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def describe_holder(path: Path, wait: float = NAME_WAIT_S) -> str:
    """Who holds the lock at ``path``, in words, from what it wrote there. A holder writes its name right after it
    takes the lock; a process refused in between (two started at once) waits up to ``wait`` seconds to read it."""
    deadline = time.monotonic() + wait
    info = _read_holder(path)
    while info is None and time.monotonic() < deadline:
        time.sleep(0.02)
        info = _read_holder(path)
    if info is None:  # the holder has opened the file but not written itself into it within the wait
        return "another process (it has not written its name yet)"
    return (
        f"vitreg {info.get('command', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
        f"started {info.get('started', '?')})"
    )


def _is_rank0() -> bool:
    # read torchrun's environment, not torch.distributed: the lock is taken before any process group exists
    return os.environ.get("RANK", "0") == "0"


def _open_locked(path: Path) -> int | None:
    """A descriptor of ``path`` holding its exclusive lock, or None when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        # the previous holder may have unlinked the file between our open and our flock: then we hold a lock on a
        # file nobody else can see, and must start again on the file now at ``path``
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def run_lock(directory: str | Path, command: str) -> Iterator[Path | None]:
    """Hold ``directory`` for ``command`` (e.g. "train") while the block runs; RunLockedError naming the holder when
    another process holds it. Yields the lock file's path (None on ranks other than 0)."""
    directory = Path(directory)
    if not _is_rank0():
        yield None
        return
    key = directory.resolve()
    path = directory / LOCK_NAME
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(path)
    except OSError as err:
        raise OutputError(f"cannot lock {path}: {err.strerror or err}") from err
    if fd is None:
        raise RunLockedError(
            f"{directory} is in use by {describe_holder(path)}; wait for it to finish or use another --out"
        )
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, _holder_text(command).encode("utf-8"))
        except OSError as err:
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
        _HELD[key] = 1
        yield path
    finally:
        _HELD.pop(key, None)
        # unlink while still holding the lock, so a process that opens the file next finds a fresh one (see above)
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
