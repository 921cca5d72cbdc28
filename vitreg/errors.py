"""The one error family of vitreg: every failure caused by the user's input or environment is a :class:`VitregError`.

``vitreg`` prints a VitregError as one line naming the file or key, with exit status 2; any other exception is a bug
and keeps its traceback (exit status 1). Library callers catch ``VitregError`` (or a subclass below) the same way.
The subclasses that describe bad values also derive from ``ValueError``, so code written against the built-in
exception keeps working.
"""

from __future__ import annotations

from pathlib import Path


class VitregError(Exception):
    """Bad input or environment (a flag, a file, a config key): one clear line, never a traceback."""


class ConfigError(VitregError, ValueError):
    """A config key, flag or value that cannot be used; the message names it and what is allowed."""


class CheckpointError(VitregError, ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


class WeightsNotFoundError(CheckpointError):
    """A named pretrained model whose weights are not on this machine."""


class DataError(VitregError, ValueError):
    """An image source, dataset or annotation file that cannot be used; the message names it."""


class _PathError(DataError):
    """A data error about one file: ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class BadImageError(_PathError):
    """An image file that cannot be decoded or used."""


class DataFormatError(_PathError):
    """A description file (COCO JSON, image list, array file) that is missing, malformed or inconsistent."""


class AnnotationError(_PathError):
    """A box annotation file (VOC XML, COCO JSON) that is missing, malformed or inconsistent."""


class RunDirError(VitregError, ValueError):
    """A run directory whose files are missing or do not follow the run-directory contract."""


class OutputError(VitregError):
    """A file vitreg must write cannot be written (disk full, no permission, I/O error); what was there is kept."""


class RunLockedError(VitregError):
    """Another process is writing the same run directory (its lock file names it); nothing was written."""


class StageError(VitregError):
    """A stage of a pipeline (reproduce, lab) failed; its directory keeps what it wrote."""


class TrainingDiverged(VitregError):
    """The loss became NaN or infinite: the run stops (last good checkpoint kept) instead of training on garbage."""
