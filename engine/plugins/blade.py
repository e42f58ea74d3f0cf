"""The ``blade`` intervention: a trained ``gate · map(h_A)`` added to model B's residual stream.

Made with ``engine.transfer.blade.inject`` (it carries A's paired rows), it composes with every
other intervention in one ``run`` call. It reads a whole text's positions, so cached decoding
reruns the pass (not position-independent).
"""

from __future__ import annotations

from engine.interventions import InterventionKind, register_intervention
from engine.transfer.blade import describe_blade, plan_blade

register_intervention(InterventionKind("blade", plan_blade, describe_blade))
