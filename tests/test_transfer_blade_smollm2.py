"""``garage blade`` end to end on SmolLM2 → SmolLM2 (capitals, a cheap budget): train, save, run."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture()
def one_thread():
    # a handful of small matmuls per step: on a loaded 2-core machine one thread is several times faster
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_blade_cli_trains_saves_and_runs_a_blade_on_smollm2(smollm2, garage_home, monkeypatch, capsys, one_thread):
    import engine.loading
    from engine.parts import PartsBin
    from engine.transfer.blade_parts import load_blade
    from garage_tui.cli import main

    monkeypatch.setattr(engine.loading, "open_model", lambda *args, **kwargs: smollm2)
    code = main(["blade", "train", "smollm2-135m", "smollm2-135m", "--at-a", "L20", "--at-b", "L20", "--task",
                 "capitals", "--steps", "6", "--name", "smol-blade", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0 and document["part"] == "smol-blade" and document["best_layer"] == 20
    [depth] = document["depths"]
    assert depth["address_a"] == "L20.out" and depth["alignment"] == "same-token-positions"
    assert depth["depth"] == pytest.approx(20 / 30) and depth["training"]["steps"] == 6
    train, held = depth["train"], depth["held_out"]
    assert train["blade"]["examples"] == 12 and held["blade"]["examples"] == 4
    # six steps on twelve capitals: the blade fits them (SmolLM2 alone: ~0.8 nats), the same-norm random blade hurts
    assert train["blade"]["loss"] < 0.5 * train["off"]["loss"] < train["random"]["loss"]
    assert held["off"]["loss"] == pytest.approx(held["off"]["loss"])  # numbers, not nulls
    record = PartsBin().get("smol-blade")
    assert record.kind == "blade" and record.config["model_b"]["config_hash"] == smollm2.config_hash
    assert record.config["task"] == "capitals" and len(record.config["task_digest"]) == 16
    part = load_blade(PartsBin(), "smol-blade", loaded_a=smollm2, loaded_b=smollm2)
    assert part.blade.width_a == part.blade.width_b == 576

    code = main(["blade", "run", "smol-blade", "--prompt", "The capital of France is", "--top", "3", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0 and shown["interventions"] == ["blade smol-blade into L20.out"]
    assert len(shown["on"]) == 3 and shown["on"][0][0] == " Paris"
    assert shown["on"][0][1] > shown["off"][0][1]  # the blade sharpens what it was trained on


def test_blade_cli_refuses_a_depth_and_an_address_together(capsys):
    from garage_tui.cli import main

    # refused before any model is opened
    code = main(["blade", "train", "smollm2-135m", "smollm2-135m", "--at-a", "L20", "--at-b", "L20", "--depths",
                 "4,8", "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("garage: error: give B's address with --at-b")
