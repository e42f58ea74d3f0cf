"""Where a coder from another tool reads: its hook name mapped onto a garage address."""

from __future__ import annotations

from typing import Any

from engine.errors import AddressError
from engine.features.errors import FeatureError


def address_for_hook(loaded: Any, hook_name: str | None, given: str | None = None) -> str:
    """``given`` when the user named one; else the coder's hook (TransformerLens name, HF module
    path, or a sparsify hookpoint relative to the model's base) as a canonical capture point."""
    from engine.addresses import resolve_point

    if given:
        return resolve_point(loaded.anatomy, given).address
    if not hook_name:
        raise FeatureError("the coder does not say where it reads; pass --at ADDRESS (e.g. L15.out)")
    base = loaded.anatomy.base_path
    for candidate in (hook_name, f"{base}.{hook_name}" if base else hook_name):
        try:
            return resolve_point(loaded.anatomy, candidate).address
        except AddressError:
            continue
    raise FeatureError(f"hook '{hook_name}' does not map onto a garage address of '{loaded.name}'; "
                       "pass --at ADDRESS (e.g. L15.out, L15.mlp.in)")
