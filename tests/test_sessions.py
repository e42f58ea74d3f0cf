"""Sessions: versioned JSON that restores the workbench exactly; bad files are refused clearly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from engine.sessions import (
    SESSION_VERSION,
    Session,
    SessionError,
    intervention_from_dict,
    load_session,
    save_session,
    session_from_garage,
)

REPO = Path(__file__).resolve().parent.parent


def test_shipped_tour_session_is_valid():
    session = load_session(REPO / "sessions" / "smollm2-tour.json")
    assert session.active_entry.spec == "smollm2-135m"
    assert session.selected == "L10.attn.h3"
    assert session.interventions == [{"kind": "ablate", "address": "L10.attn.h3", "mode": "zero"}]
    # the shipped file predates "view": its "pane" is read as the view
    assert session.view == "bay" and session.theme == "garage" and session.notes


def test_save_and_load_round_trip(tmp_path):
    session = Session(prompt="hello", selected="L3.mlp", view="diagnostics", theme="garage-light",
                      interventions=[{"kind": "scale", "address": "L3.mlp", "factor": 0.5}],
                      recipe={"recipe_version": 1, "name": "x"})
    path = save_session(tmp_path / "deep" / "s.json", session)
    assert load_session(path) == session
    assert json.loads(path.read_text())["version"] == SESSION_VERSION
    # atomic: no temp files left beside it
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]


@pytest.mark.parametrize(("document", "fragment"), [
    ({"kind": "model-garage-session", "version": SESSION_VERSION + 1}, "newer than this garage"),
    ({"kind": "model-garage-session"}, "'version' must be an integer"),
    ({"kind": "something-else", "version": 1}, "'kind' must be"),
    ({"kind": "model-garage-session", "version": 1, "view": ["bay"]}, "'view' must be a string"),
    ({"kind": "model-garage-session", "version": 1, "models": [{"name": 3}]}, "each model needs"),
    ({"kind": "model-garage-session", "version": 1, "interventions": "ablate all"}, "'interventions' must be"),
    ([1, 2], "top level must be a JSON object"),
])
def test_malformed_and_future_sessions_are_refused(tmp_path, document, fragment):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(SessionError, match=fragment):
        load_session(path)


def test_not_json_and_missing_files(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(SessionError, match="not valid JSON"):
        load_session(path)
    with pytest.raises(SessionError, match="no session file"):
        load_session(tmp_path / "missing.json")


def test_interventions_rebuild_and_tensor_ones_are_refused():
    from engine.interventions import ablate, scale

    for item in (ablate("L10.attn.h3"), ablate("L3", "mean"), scale("L2.mlp", 0.25)):
        assert intervention_from_dict(item.to_dict()).to_dict() == item.to_dict()
    with pytest.raises(SessionError, match="carries a tensor"):
        intervention_from_dict({"kind": "steer", "address": "L3", "strength": 2.0})
    with pytest.raises(SessionError, match="no address"):
        intervention_from_dict({"kind": "ablate"})


def test_session_from_garage_names_the_bundled_spec(smollm2):
    from engine.garage import Garage
    from engine.interventions import ablate

    garage = Garage(models={smollm2.name: smollm2}, active=smollm2.name, prompt="p", selected="L10.attn.h3",
                    interventions=[ablate("L10.attn.h3")])
    session = session_from_garage(garage, view="parts", theme="garage-ansi")
    assert session.models[0].spec == "smollm2-135m"
    assert session.interventions == [{"kind": "ablate", "address": "L10.attn.h3", "mode": "zero"}]
    assert (session.view, session.theme, session.selected) == ("parts", "garage-ansi", "L10.attn.h3")


def test_reading_a_session_does_not_import_torch(tmp_path):
    import subprocess

    code = ("import sys; from engine.sessions import load_session; "
            f"load_session({str(REPO / 'sessions' / 'smollm2-tour.json')!r}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_steer_origin_round_trips_and_recomputes_the_vector(smollm2, tmp_path):
    import torch

    from engine.analyzers.steering import steer_from_prompts, steering_vector
    from engine.garage import Garage

    item = steer_from_prompts(smollm2, "L6", ["I love it", "Wonderful"], ["I hate it"], 3.0)
    document = item.to_dict()
    assert document == {"kind": "steer", "address": "L6", "strength": 3.0,
                        "origin": {"positive": ["I love it", "Wonderful"], "negative": ["I hate it"]}}
    path = save_session(tmp_path / "s.json", Session(interventions=[document]))
    [stored] = load_session(path).interventions
    rebuilt = intervention_from_dict(stored, smollm2)
    assert rebuilt.to_dict() == document
    expected = steering_vector(smollm2, 6, ["I love it", "Wonderful"], ["I hate it"]).vector
    assert torch.equal(rebuilt.vector, expected) and rebuilt.vector.norm() > 1.0
    # the garage's toggle sees the rebuilt steer as the same edit, and a different origin as another
    garage = Garage(interventions=[item])
    assert garage.toggle(rebuilt) is False and garage.interventions == []
    other = intervention_from_dict(dict(document, origin={"positive": ["Wonderful"], "negative": ["I hate it"]}),
                                   smollm2)
    assert not torch.equal(other.vector, expected)
    assert garage.toggle(item) is True and garage.toggle(other) is True and len(garage.interventions) == 2


def test_steer_origins_that_cannot_be_rebuilt_are_refused(smollm2):
    origin = {"positive": ["I love it"], "negative": ["I hate it"]}
    with pytest.raises(SessionError, match="needs a model with weights open"):
        intervention_from_dict({"kind": "steer", "address": "L3", "strength": 2.0, "origin": origin})
    with pytest.raises(SessionError, match="non-empty 'positive' and 'negative'"):
        intervention_from_dict({"kind": "steer", "address": "L3", "origin": {"positive": ["x"]}}, smollm2)
    with pytest.raises(SessionError, match="numeric 'strength'"):
        intervention_from_dict({"kind": "steer", "address": "L3", "strength": "big", "origin": origin}, smollm2)
    with pytest.raises(SessionError, match="cannot be rebuilt: cannot steer 'L3.mlp'"):
        intervention_from_dict({"kind": "steer", "address": "L3.mlp", "origin": origin}, smollm2)
    with pytest.raises(SessionError, match="cannot be rebuilt: .*L99"):
        intervention_from_dict({"kind": "steer", "address": "L99", "origin": origin}, smollm2)
