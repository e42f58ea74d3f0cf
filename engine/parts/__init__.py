"""The parts bin: extract any part of a model, catalog it with provenance, load it back runnable.

``PartsBin`` is the whole public face; records are plain dataclasses with ``to_dict``.
"""

from __future__ import annotations

from engine.parts.catalog import PartsBin
from engine.parts.errors import (
    CatalogCorruptError,
    PartError,
    PartIntegrityError,
    PartNameError,
    PartNotFoundError,
)
from engine.parts.record import PartRecord, TensorEntry, VerifyResult

__all__ = [
    "CatalogCorruptError", "PartError", "PartIntegrityError", "PartNameError", "PartNotFoundError",
    "PartRecord", "PartsBin", "TensorEntry", "VerifyResult",
]
