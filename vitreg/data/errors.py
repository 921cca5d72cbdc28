"""Errors of the data layer."""

from __future__ import annotations


class BadImageError(ValueError):
    """An image file that cannot be used; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
