"""A per-process cache, so each worker loads its models once and reuses them for every trial."""

from __future__ import annotations

from typing import Any

_CACHE: dict[str, Any] = {}


def worker_cache() -> dict[str, Any]:
    """This process's cache (the in-process backend shares the caller's, pool workers own theirs)."""
    return _CACHE
