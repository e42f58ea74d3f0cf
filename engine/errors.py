"""One hierarchy of user-facing errors.

Every error the engine raises on purpose is a ``GarageError`` whose message says what was
wrong and what to do; the CLI prints it as one line and exits with code 2, the TUI shows it
as a notification.
"""

from __future__ import annotations


class GarageError(Exception):
    """Base of every error meant for a person: one line, names the problem and the fix."""

    exit_code = 2


class ModelNotFoundError(GarageError):
    """A model argument that names no bundled model, local path or reachable hub id."""


class ModelLoadError(GarageError):
    """A model file or folder exists but cannot be read as a model."""


class HubUnreachableError(GarageError):
    """A hub id was given but the hub cannot be reached (offline machine)."""


class DeviceError(GarageError):
    """A device or dtype that this machine cannot provide."""


class AddressError(GarageError):
    """An address that does not name a part or capture point of the open model."""


class InterventionError(GarageError):
    """An intervention that cannot be applied to the named part."""


class Cancelled(GarageError):
    """The caller set the cancel event; the job stopped and kept nothing half-done."""


class StorageError(GarageError):
    """A file under GARAGE_HOME (or given by the user) that cannot be read or written."""
