"""Progress callbacks and cancel events: the one way every long engine job reports and stops.

A job takes ``progress(stage, fraction)`` (fraction in [0, 1], or None when unknown) and a
``threading.Event``; it calls ``check_cancel`` at each natural step (a layer, a batch, a
file) and raises ``Cancelled`` there, keeping nothing partial.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from engine.errors import Cancelled

Progress = Callable[[str, float | None], None]


def check_cancel(cancel: threading.Event | None, what: str) -> None:
    """Raise ``Cancelled`` naming ``what`` once ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} was cancelled; no partial result was kept")


def notify(progress: Progress | None, stage: str, fraction: float | None = None) -> None:
    """Report ``stage`` (and how far along it is) to ``progress``, if one was given."""
    if progress is not None:
        progress(stage, fraction)


def scaled(progress: Progress | None, start: float, stop: float) -> Progress | None:
    """A progress callback mapping a sub-job's [0, 1] onto [start, stop] of the whole job."""
    if progress is None:
        return None
    outer = progress

    def inner(stage: str, fraction: float | None) -> None:
        outer(stage, None if fraction is None else start + (stop - start) * fraction)

    return inner
