"""One job interface for every long sweep: a list of trial specs and a pure function of one spec.

Backends run the same job in-process (default), on a local spawn pool (``workers=N``) or on
Ray actors (an optional extra); results come back keyed by trial index, so the caller's
bookkeeping never depends on which backend ran them or in what order they finished.
"""

from __future__ import annotations

from engine.jobs.backends import Backend, InProcessBackend, PoolBackend, make_backend
from engine.jobs.cache import worker_cache
from engine.jobs.job import JobError, TrialFailed

__all__ = ["Backend", "InProcessBackend", "JobError", "PoolBackend", "TrialFailed", "make_backend", "worker_cache"]
