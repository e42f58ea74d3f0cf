"""``garage stitch`` end to end on SmolLM2 against itself: the identity seam, saved as a part."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_stitch_cli_fits_identity_seam_and_saves_part(smollm2, garage_home, monkeypatch, capsys):
    import engine.loading
    from engine.parts import PartsBin
    from garage_tui.cli import main

    monkeypatch.setattr(engine.loading, "open_model", lambda *args, **kwargs: smollm2)
    code = main(["stitch", "smollm2-135m", "smollm2-135m", "--from", "L3", "--to", "L3.out", "--max-chars", "6000",
                 "--loss-chunks", "1", "--name", "self-stitch", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0 and document["part"] == "self-stitch"
    assert document["address_a"] == "L3.out" and document["alignment"] == "same-token-positions"
    assert document["held_out"]["r2"] > 0.99  # A → A at one address: the map is the identity
    assert document["loss"]["recovered_vs_mean"] > 0.95
    record = PartsBin().get("self-stitch")
    assert record.kind == "stitch" and record.config["model_b"]["config_hash"] == smollm2.config_hash
    assert record.config["metrics"]["text_digest"] == document["text_digest"]
    weight = PartsBin().load_tensors("self-stitch")["weight"]
    assert weight.shape == (576, 576) and float(weight.diagonal().mean()) > 0.9
