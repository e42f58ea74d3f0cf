"""The shared workbench object the TUI, CLI and scripts all drive."""

from __future__ import annotations

import pytest

from engine.errors import GarageError
from engine.garage import Garage
from engine.interventions import ablate, scale
from engine.runner import predict


@pytest.mark.slow
def test_garage_opens_toggles_and_runs():
    garage = Garage()
    with pytest.raises(GarageError, match="no model is open"):
        garage.current  # noqa: B018
    stages = []
    loaded = garage.open("smollm2-135m", progress=lambda stage, fraction: stages.append(stage))
    assert garage.current is loaded and stages[-1] == "ready"
    assert garage.toggle(ablate("L10.attn.h3")) is True
    assert garage.toggle(scale("L2.mlp", 0.5)) is True
    assert garage.toggle(ablate("L10.attn.h3")) is False  # the same intervention again turns it off
    assert [i.describe() for i in garage.interventions] == ["scale L2.mlp ×0.5"]
    plain = predict(loaded, "The capital of France is", top_k=1)
    edited = predict(loaded, "The capital of France is", interventions=garage.interventions, top_k=1)
    assert plain.top[0].text == " Paris"
    assert plain.logits.sub(edited.logits).abs().max().item() > 1e-3
    garage.close("smollm2-135m")
    assert garage.active is None
