"""The ``blade`` intervention: a trained ``gate · map(h_A)`` added to model B's residual stream.

Made with ``engine.transfer.blade.inject`` (it carries A's paired rows), it composes with every
other intervention in one ``run`` call. It reads a whole text's positions, so cached decoding
reruns the pass (not position-independent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.intervention_kinds import InterventionKind, register_intervention

if TYPE_CHECKING:
    from engine.anatomy import Anatomy
    from engine.interventions import EditPlan, Intervention, RunMask


# torch loads when a blade is planned or described, not when plugins are listed
def _plan(anatomy: Anatomy, item: Intervention, mask: RunMask | None) -> list[EditPlan]:
    from engine.transfer.blade import plan_blade

    return plan_blade(anatomy, item, mask)


def _describe(item: Intervention) -> str:
    from engine.transfer.blade import describe_blade

    return describe_blade(item)


register_intervention(InterventionKind("blade", _plan, _describe))
