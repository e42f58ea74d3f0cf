"""Errors of the features room: each says what was wrong and what to do."""

from __future__ import annotations

from engine.errors import GarageError


class FeatureError(GarageError):
    """A sparse coder, transcoder or direction that cannot be read, attached or used as asked."""


class FeatureFormatError(FeatureError):
    """A folder or file that is not a readable SAELens / sparsify / garage feature part."""


class FeatureMismatchError(FeatureError):
    """A feature part made for another model, address or width than the one it is attached to."""
