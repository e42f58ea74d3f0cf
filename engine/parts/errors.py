"""Errors of the parts bin; all are ``GarageError`` so the CLI prints one line and exits 2."""

from __future__ import annotations

from engine.errors import GarageError, StorageError


class PartError(GarageError):
    """A part that cannot be extracted, found, loaded or run as asked."""


class PartNotFoundError(PartError):
    """No part of that name in the catalog."""


class PartNameError(PartError):
    """A part name that is not allowed (path separators, ``..``, odd characters) or already taken."""


class PartIntegrityError(PartError):
    """A part file that is missing or whose bytes no longer match the sha256 in the catalog."""


class CatalogCorruptError(StorageError):
    """The TinyDB catalog file cannot be parsed; it was moved aside, never overwritten."""
