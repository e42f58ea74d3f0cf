"""The intervention registry, torch-free: a plugin can register a kind without importing torch,
so verbs that only load plugins to learn names (``recipe check`` of a recipe with blend or
finish ops) stay light. ``engine.interventions`` re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import InterventionError
from engine.registry import Registry

if TYPE_CHECKING:
    from engine.anatomy import Anatomy
    from engine.interventions import EditPlan, Intervention, RunMask


@dataclass(frozen=True)
class InterventionKind:
    """How one kind of intervention is planned, described and serialised (see ``INTERVENTIONS``)."""

    name: str
    plan: Callable[[Anatomy, Intervention, RunMask | None], list[EditPlan]]  # the hook edits
    describe: Callable[[Intervention], str]
    fields: tuple[str, ...] = ()  # scalar fields ``to_dict`` writes beside kind and address
    position_independent: Callable[[Intervention], bool] = lambda item: False
    needs_mask: Callable[[Intervention], bool] = lambda item: False  # reads the pass's attention mask
    # rebuilds one from its ``to_dict()`` document; None: it carries a tensor sessions do not store
    restore: Callable[[dict[str, Any]], Intervention] | None = None


INTERVENTIONS: Registry[InterventionKind] = Registry("intervention", InterventionError)


def register_intervention(kind: InterventionKind) -> InterventionKind:
    """Make ``kind`` known by name to ``edits_for``, ``describe`` and ``to_dict``."""
    return INTERVENTIONS.register(kind.name, kind)
