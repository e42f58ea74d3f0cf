"""The job contract shared by every backend, and its errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.errors import GarageError

# A trial function: a module-level (picklable) pure function of one spec, returning a dataclass.
TrialFn = Callable[[Any], Any]

MAX_REQUEUES = 3  # a trial whose worker dies more often than this is a bug in the trial, not bad luck


class JobError(GarageError):
    """A job that cannot run: a bad backend choice, a missing extra, a worker that keeps dying."""


class TrialFailed(GarageError):
    """A trial function raised; the message names the trial and the original error."""
