"""``garage stitch`` end to end on SmolLM2 against itself: the identity seam, saved as a part."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_stitch_cli_fits_a_seam_then_transfer_moves_a_steer_through_it_and_saves_it_on_b(
        smollm2, garage_home, monkeypatch, capsys):
    """One fitted seam serves both verbs (a fit is the costly part): ``stitch`` saves it, ``transfer`` loads it."""
    import engine.loading
    from engine.features.parts import load_direction
    from engine.parts import PartsBin
    from garage_tui.cli import main

    monkeypatch.setattr(engine.loading, "open_model", lambda *args, **kwargs: smollm2)
    code = main(["stitch", "smollm2-135m", "smollm2-135m", "--from", "L3", "--to", "L3.out", "--max-chars", "6000",
                 "--loss-chunks", "1", "--name", "seam", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0 and document["part"] == "seam"
    assert document["address_a"] == "L3.out" and document["alignment"] == "same-token-positions"
    assert document["held_out"]["r2"] > 0.99  # A → A at one address: the map is the identity
    assert document["loss"]["recovered_vs_mean"] > 0.95
    record = PartsBin().get("seam")
    assert record.kind == "stitch" and record.config["model_b"]["config_hash"] == smollm2.config_hash
    assert record.config["metrics"]["text_digest"] == document["text_digest"]
    weight = PartsBin().load_tensors("seam")["weight"]
    assert weight.shape == (576, 576) and float(weight.diagonal().mean()) > 0.9

    code = main(["transfer", "smollm2-135m", "smollm2-135m", "--at-a", "L3.out", "--at-b", "L3.out", "--task",
                 "sentiment", "--stitch", "seam", "--alphas", "2", "-2", "--random", "1", "--neutral-chunks", "1",
                 "--name", "moved", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0 and document["part"] == "moved" and document["stitch"]["part"] == "seam"
    assert document["alignment"] == "same-token-positions" and document["task"] == "sentiment"
    # A → A through an (almost) identity seam: the moved steer is the native one
    assert document["cosine"] > 0.99 and document["mean_fraction"] == pytest.approx(1.0, abs=0.05)
    assert [s["alpha"] for s in document["strengths"]] == [2.0, -2.0]
    assert document["strengths"][0]["native"] > 0 > document["strengths"][1]["native"]  # + raises praise words
    record, vector = load_direction(PartsBin(), "moved", smollm2)
    provenance = record.config["provenance"]
    assert record.address == "L3.out" and provenance["model_a"]["config_hash"] == smollm2.config_hash
    assert provenance["text_digest"] == document["text_digest"] and provenance["stitch"]["part"] == "seam"
    assert provenance["unit_strength"] == pytest.approx(document["norm_native"] / document["norm_mapped"])
    assert float(vector.norm()) == pytest.approx(document["norm_mapped"], rel=1e-5)
    if document["works"]:
        assert provenance["strength_range"] == document["strength_range"]
    with pytest.raises(SystemExit):
        main(["transfer", "smollm2-135m", "smollm2-135m", "--at-a", "L3.out", "--at-b", "L3.out", "--task", "nope"])
    capsys.readouterr()
    assert main(["transfer", "smollm2-135m", "smollm2-135m", "--at-a", "L3.out", "--at-b", "L3.out",
                 "--stitch", "moved"]) == 2
    assert "part 'moved' is a direction, not a stitch" in capsys.readouterr().err


def test_transfer_cli_refuses_bad_counts_before_opening_a_model(capsys):
    from garage_tui.cli import main

    assert main(["transfer", "nowhere-a", "nowhere-b", "--at-a", "L1", "--at-b", "L1", "--random", "0"]) == 2
    assert "random control vectors must be at least 1" in capsys.readouterr().err
    assert main(["transfer", "nowhere-a", "nowhere-b", "--at-a", "L1", "--at-b", "L1", "--neutral-chunks",
                 "100000"]) == 2
    assert "over the garage's limit of 64" in capsys.readouterr().err
