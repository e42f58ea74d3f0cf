"""Pilot tests of the engine bay on the real SmolLM2: tree, detail, interventions, runs."""

from __future__ import annotations

import pytest
from test_tui_support import goto, make_app, run, wait_for, wait_idle

pytestmark = pytest.mark.slow


def test_bay_tree_details_and_first_run(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.last_report is not None, what="the first run")
            from garage_tui.widgets.part_tree import PartTree

            tree = app.query_one(PartTree)
            # every part of the anatomy is a node, heads carry their KV group (GQA: 9 heads, 3 groups)
            assert set(tree.nodes_by_address) == set(smollm2.anatomy.by_address)
            assert "kv1" in tree.nodes_by_address["L10.attn.h3"].label.plain
            assert "kv2" in tree.nodes_by_address["L10.attn.h8"].label.plain
            assert "9h/3kv" in tree.nodes_by_address["L10.attn"].label.plain
            report = app.last_report
            assert report.top[0][0] == " Paris"
            # the sparkline draws the engine's residual norms, one per layer
            assert len(report.norms) == 30 and all(n > 0 for n in report.norms)
            assert list(app.query_one("#norms").data) == report.norms
            await goto(pilot, "L10.attn.h3")
            detail = str(app.query_one("#part-detail").render())
            assert "KV group 1" in detail and "d_head 64" in detail
            params = smollm2.anatomy.by_address["L10.attn.h3"].params
            assert f"{params:,}" in detail

    run(scenario())


def test_ablating_a_head_changes_the_next_run(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.last_report is not None, what="the first run")
            clean_prob = app.last_report.top[0][1]
            await goto(pilot, "L10.attn.h3")
            await pilot.press("a")
            assert [i.to_dict() for i in app.garage.interventions] == [
                {"kind": "ablate", "address": "L10.attn.h3", "mode": "zero"}]
            from garage_tui.widgets.part_tree import PartTree

            assert "[ablated]" in app.query_one(PartTree).nodes_by_address["L10.attn.h3"].label.plain
            first = app.last_report
            await pilot.press("r")
            await wait_for(pilot, lambda: app.last_report is not first and app.job is None, what="the ablated run")
            report = app.last_report
            assert report.interventions == ["zero-ablate L10.attn.h3"]
            # before/after: the baseline equals the clean run; the ablated run differs
            assert report.baseline_top[0][1] == pytest.approx(clean_prob, rel=1e-6)
            assert abs(report.top[0][1] - clean_prob) > 1e-3
            stats, before = report.stats, report.baseline_stats
            assert report.point == "L10.attn.h3.z"
            assert stats["absmax"] == 0.0 and before["absmax"] > 0.1
            # layers before L10 are untouched, later ones change
            assert report.norms[:10] == pytest.approx(report.baseline_norms[:10], rel=1e-6)
            assert report.norms[10] != pytest.approx(report.baseline_norms[10], rel=1e-6)
            await pilot.press("a")
            assert app.garage.interventions == []

    run(scenario())


def test_mean_ablate_scale_and_clear(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            await goto(pilot, "L3.mlp")
            await pilot.press("m", "s")
            assert [i.describe() for i in app.garage.interventions] == ["mean-ablate L3.mlp", "scale L3.mlp ×0.5"]
            await pilot.press("c")
            assert app.garage.interventions == []
            # the root is not an editable part: the key is inert and hidden from the footer
            await goto(pilot, "embed")
            await pilot.press("a")
            assert app.garage.interventions == []
            assert app.check_action("toggle_intervention", ("ablate",)) is False

    run(scenario())


def test_tree_keys_walk_expand_collapse(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot)
            from garage_tui.widgets.part_tree import PartTree

            tree = app.query_one(PartTree)
            tree.focus()
            await pilot.press("g")
            assert tree.cursor_node.data == "model"
            await pilot.press("j", "j")
            assert app.garage.selected == "L0"
            await pilot.press("l")
            assert tree.cursor_node.is_expanded
            await pilot.press("l")
            assert app.garage.selected == "L0.attn"
            await pilot.press("h")
            assert app.garage.selected == "L0"
            await pilot.press("h")
            assert not tree.cursor_node.is_expanded
            await pilot.press("k")
            assert app.garage.selected == "embed"
            await pilot.press("G")
            assert app.garage.selected == "lm_head"

    run(scenario())


def test_big_checkpoints_show_structure_first_then_weights(smollm2, tmp_path, monkeypatch):
    """With the size threshold at 0, any folder opens structure-only first, then with weights."""
    import torch
    import transformers

    from garage_tui.controller import Workbench
    from garage_tui.factory import build_app
    from garage_tui.settings import Settings

    folder = tmp_path / "tiny"
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=96,
                                      vocab_size=len(smollm2.tokenizer))
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    smollm2.tokenizer.save_pretrained(folder)
    seen = []
    original = Workbench.install_model

    def install(self, loaded):
        seen.append(loaded.structure_only)
        return original(self, loaded)

    monkeypatch.setattr(Workbench, "install_model", install)

    async def scenario():
        app = build_app(None, None, None, Settings(structure_first_gb=0.0, path=tmp_path / "s.yaml"),
                        model=str(folder))
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.last_report is not None, 120, "the tiny model's first run")
            assert not app.loaded.structure_only
            assert len(app.last_report.norms) == 2

    run(scenario())
    assert seen == [True, False]
