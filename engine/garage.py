"""The one object that owns open models and the workbench state around them.

The TUI, the CLI and user scripts drive this same object; it holds no UI state beyond what
a session needs to restore (prompt, selected part, active interventions).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from engine.errors import GarageError
from engine.interventions import Intervention
from engine.loading import LoadedModel, Progress, open_model


@dataclass
class Garage:
    """Open models by name, plus the current prompt, selection and interventions."""

    models: dict[str, LoadedModel] = field(default_factory=dict)
    active: str | None = None
    prompt: str = ""
    selected: str | None = None
    interventions: list[Intervention] = field(default_factory=list)

    def open(
        self,
        spec: str,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        structure_only: bool = False,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        **options: Any,
    ) -> LoadedModel:
        """Open ``spec`` and make it the active model (replacing one of the same name)."""
        loaded = open_model(spec, device=device, dtype=dtype, structure_only=structure_only,
                            progress=progress, cancel=cancel, **options)
        self.models[loaded.name] = loaded
        self.active = loaded.name
        return loaded

    @property
    def current(self) -> LoadedModel:
        if self.active is None or self.active not in self.models:
            raise GarageError("no model is open; open one first (e.g. smollm2-135m)")
        return self.models[self.active]

    def close(self, name: str) -> None:
        self.models.pop(name, None)
        if self.active == name:
            self.active = next(iter(self.models), None)

    def toggle(self, intervention: Intervention) -> bool:
        """Add ``intervention`` or remove an equal one already active; True when now active."""
        for existing in self.interventions:
            if _same(existing, intervention):
                self.interventions.remove(existing)
                return False
        self.interventions.append(intervention)
        return True


def _same(a: Intervention, b: Intervention) -> bool:
    """Equal descriptions and equal tensors (``to_dict`` names tensors, it does not hold them)."""
    import torch

    if a.to_dict() != b.to_dict() or a.module is not b.module:
        return False
    for x, y in ((a.vector, b.vector), (a.value, b.value)):
        if (x is None) != (y is None):
            return False
        if x is not None and y is not None and (
                x.shape != y.shape or not torch.equal(x.detach().cpu(), y.detach().cpu())):
            return False
    return True
