"""Feature edits in sessions: an attached SAE with per-feature ablate/scale/steer and direction
project-out/add are saved in a session and restored from the parts bin to the same run output."""

from __future__ import annotations

import json

import pytest
import torch

from engine.features.attach import FeatureEdit, splice
from engine.features.coder import CoderConfig, SparseCoder
from engine.features.directions import direction_edit
from engine.features.parts import save_coder, save_direction
from engine.garage import Garage
from engine.parts import PartsBin
from engine.run import run
from engine.sessions import SessionError, interventions_from_session, load_session, save_session, session_from_garage
from tests.tiny_models import tiny_model

IDS = torch.tensor([[1, 5, 9, 33, 17, 64, 2, 90]])
D, D_SAE = 64, 96


@pytest.fixture()
def workbench(garage_home):
    """A tiny Llama with an SAE part at L1.out and a direction part at L0.out in this test's bin."""
    loaded = tiny_model("llama", seed=2)
    generator = torch.Generator().manual_seed(0)
    tensors = {"W_enc": torch.randn(D, D_SAE, generator=generator) / 8, "b_enc": torch.zeros(D_SAE),
               "W_dec": torch.randn(D_SAE, D, generator=generator) / 8, "b_dec": torch.zeros(D)}
    coder = SparseCoder(CoderConfig("topk", D, D_SAE, D, k=8.0), tensors)
    bin_ = PartsBin()
    save_coder(bin_, loaded, coder, "L1.out", name="tiny-sae")
    vector = torch.randn(D, generator=generator)
    save_direction(bin_, loaded, vector, "L0.out", method="diffmean", provenance={}, name="tiny-dir")
    garage = Garage(models={loaded.name: loaded}, active=loaded.name, prompt="hello")
    garage.interventions = [
        splice(coder, "L1.out", edits=[FeatureEdit("ablate", [0, 3, 5]), FeatureEdit("scale", [7], 3.0),
                                       FeatureEdit("steer", [11, 12], 2.5)], part="tiny-sae"),
        direction_edit(vector, "writers", "ablate", part="tiny-dir"),
        direction_edit(vector, "L0.out", "add", 1.5, part="tiny-dir"),
    ]
    return garage, loaded


def test_feature_edits_restore_to_the_same_run(workbench, tmp_path):
    garage, loaded = workbench
    before = run(loaded, IDS, interventions=garage.interventions).logits
    assert (before - run(loaded, IDS).logits).abs().max() > 1e-3  # the edits change the run
    path = save_session(tmp_path / "s.json", session_from_garage(garage))
    stored = json.loads(path.read_text())["interventions"]
    assert [item["kind"] for item in stored] == ["features", "direction", "direction"]
    assert stored[0]["part_sha256"] == PartsBin().get("tiny-sae").sha256
    assert stored[0]["edits"][2] == {"op": "steer", "features": [11, 12], "value": 2.5}
    restored = interventions_from_session(load_session(path), loaded)
    assert [item.to_dict() for item in restored] == [item.to_dict() for item in garage.interventions]
    assert torch.equal(run(loaded, IDS, interventions=restored).logits, before)


def test_changed_or_missing_parts_are_refused(workbench, tmp_path):
    garage, loaded = workbench
    session = load_session(save_session(tmp_path / "s.json", session_from_garage(garage)))
    bin_ = PartsBin()
    bin_.remove("tiny-dir")
    with pytest.raises(SessionError, match="direction edit on writers cannot be restored: no part named 'tiny-dir'"):
        interventions_from_session(session, loaded)
    save_direction(bin_, loaded, torch.ones(D), "L0.out", method="diffmean", provenance={}, name="tiny-dir")
    with pytest.raises(SessionError, match="changed since the session was saved"):
        interventions_from_session(session, loaded)
    other = tiny_model("llama", seed=2)
    other.config.rms_norm_eps = 1e-3  # another config: the SAE was not made for it
    with pytest.raises(SessionError, match="was made on"):
        interventions_from_session(session, other)
    unsaved = {"kind": "features", "address": "L1.out", "part": None, "exact": True, "edits": []}
    session.interventions = [unsaved]
    with pytest.raises(SessionError, match="has no parts-bin part"):
        interventions_from_session(session, loaded)
