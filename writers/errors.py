"""Exceptions raised for bad archives, always naming the file and record."""

from __future__ import annotations


class ArchiveError(ValueError):
    """An archive (manifest, shard file or record) is not what it claims.

    Attributes: ``path`` (file, or None), ``record`` (0-based record number
    within the file, or None), ``detail`` (the message without location).
    """

    def __init__(self, detail: str, path: str | None = None, record: int | None = None):
        self.detail = detail
        self.path = path
        self.record = record
        super().__init__(format_location(path, record) + detail)

    def __str__(self) -> str:
        return format_location(self.path, self.record) + self.detail


class MissingFileError(ArchiveError, FileNotFoundError):
    """A file listed in a manifest (or the manifest itself) does not exist."""


class WriteError(ArchiveError, PermissionError):
    """A path cannot be written (permissions, not a directory, no bucket)."""


class LayoutError(ArchiveError):
    """A requested layout (device count, shard plan) is impossible."""


def format_location(path: str | None, record: int | None) -> str:
    """``"path, record r: "`` prefix for messages (empty when unknown)."""
    if path is None:
        return ""
    if record is None:
        return f"{path}: "
    return f"{path}, record {record}: "
