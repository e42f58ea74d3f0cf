"""`garage --model gemma3-270m`: the app opens Gemma itself (from the conversion cache) through the same
factory the command uses; the bay shows its heads with their KV group and its sliding-window layers,
and the first run reads all 18 layers."""

from __future__ import annotations

import pytest
from test_tui_support import run, wait_for

pytestmark = pytest.mark.slow


def test_app_opens_gemma_by_its_bundled_name(tmp_path):
    from engine.bundled import bundled_path
    from engine.gguf_cache import converted_folder
    from engine.parts import PartsBin
    from garage_tui.factory import build_app
    from garage_tui.settings import load_settings

    converted_folder(bundled_path("gemma3-270m"))  # the once-per-run conversion is not the app's to time

    async def scenario():
        app = build_app(None, PartsBin(tmp_path), None, load_settings(tmp_path / "settings.yaml"),
                        model="gemma3-270m")
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.loaded is not None, timeout=300, what="Gemma to load")
            assert app.loaded.name == "gemma3-270m" and app.loaded.anatomy.family.name == "gemma3"
            from garage_tui.widgets.part_tree import PartTree

            tree = app.query_one(PartTree)
            await wait_for(pilot, lambda: "L17.attn.h3" in tree.nodes_by_address, what="the bay tree")
            assert "4h/1kv" in tree.nodes_by_address["L3.attn"].label.plain
            assert "kv0" in tree.nodes_by_address["L3.attn.h3"].label.plain
            assert "sliding 512" in tree.nodes_by_address["L3"].label.plain
            assert "sliding" not in tree.nodes_by_address["L5"].label.plain
            await wait_for(pilot, lambda: app.last_report is not None and app.job is None, timeout=300,
                           what="the first run")
            assert len(app.last_report.norms) == 18

    run(scenario())


def test_every_pane_works_on_gemma(gemma, tmp_path, monkeypatch):
    """One app over the session's Gemma: diagnostics (stats, lens, attention), a head extracted into
    the parts bin, the identity recipe on the build bench, attribution and features; one cheap
    action each, checked against the engine's own numbers or Gemma's geometry."""
    import torch
    from test_tui_support import goto, make_app, wait_idle

    import garage_tui.screens.attribution as attribution_screen
    from engine.analyzers.attention import attention_report
    from engine.features.coder import CoderConfig, SparseCoder
    from engine.features.parts import save_coder
    from engine.parts import PartsBin

    # A small job: two pairs, the top four nodes re-checked (the TUI default is 4 and 10).
    monkeypatch.setattr(attribution_screen, "ATTRIBUTION_PAIRS", 2)
    monkeypatch.setattr(attribution_screen, "ATTRIBUTION_TOP", 4)
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(256, 640, generator=g)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    coder = SparseCoder(CoderConfig("topk", 640, 256, 640, k=16.0, hook_name="blocks.6.hook_resid_post"),
                        {"W_enc": w_dec.T.contiguous(), "b_enc": torch.zeros(256), "W_dec": w_dec,
                         "b_dec": torch.zeros(640)})
    sae_name = str(save_coder(PartsBin(tmp_path), gemma, coder, "L6.out", name="gemma-l6-sae").name)

    async def scenario():
        app = make_app(gemma, home=tmp_path, model=gemma.name)  # the open model, not the default one
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_idle(pilot, 300)
            # diagnostics: stats of the selected head, the lens over 18 layers, attention on demand
            await goto(pilot, "L3.attn.h2")
            await pilot.press("2")
            await wait_idle(pilot, 300)
            pane = app.query_one("DiagnosticsPane")
            assert pane.report is not None and pane.report.point and pane.report.point.startswith("L3.attn.h2")
            assert pane.report.stats and pane.report.stats["rms"] > 0
            assert len(pane.report.norms) == 18
            lens = [layer["address"] for layer in pane.report.lens["layers"]]
            assert lens == ["embed.out"] + [f"L{i}.out" for i in range(18)]
            assert app.query_one("#lens-table").row_count == 19
            await pilot.press("A")
            await wait_for(pilot, lambda: pane.attention is not None, 300, "the attention report")
            reference = attention_report(gemma, app.prompt_text)
            assert len(pane.attention.entropy) == 4  # four query heads, one KV head
            assert pane.attention.entropy == pytest.approx(reference.entropy_grid()[3], rel=1e-5)
            assert [sum(row) for row in pane.attention.pattern] == pytest.approx([1.0] * len(reference.tokens))
            # parts bin: extract the head, the bin lists it with Gemma as its source
            await pilot.press("1")
            await pilot.press("x")
            await wait_idle(pilot, 300)
            await pilot.press("3")
            parts = app.query_one("PartsPane")
            await wait_for(pilot, lambda: any(r["address"] == "L3.attn.h2" for r in parts.rows), 60, "the part")
            [head] = [r for r in parts.rows if r["address"] == "L3.attn.h2"]
            assert head["kind"] == "head" and head["source"]["name"] == "gemma3-270m"
            # q, k, v rows of one 256-wide head (its shared KV head) and its o_proj columns
            assert head["params"] == 4 * 256 * 640 + 2 * 256  # plus the q/k norms
            # build bench: the identity recipe of the open model validates with all 18 layers
            bench = app.query_one("BenchPane")
            await pilot.press("4", "n")
            await wait_for(pilot, lambda: bench.validation is not None, 120, "the identity recipe")
            assert bench.validation.ok and bench.validation.layers == 18, bench.validation.problems
            # attribution: a small job on antonyms; Enter on the top node selects it in the bay
            await pilot.press("1", "T", "enter")
            view = app.screen.query_one("AttributionView")
            await wait_for(pilot, lambda: not view.running, 300, "the attribution job")
            assert view.report is not None and view.report.n_pairs == 2, str(
                view.query_one("#attribution-status").render())
            assert len(view.exact_column()) == 4 and all(cell.strip() for cell in view.exact_column())
            from garage_tui.widgets.attribution_view import part_of

            top = part_of(view.report.top_nodes(4)[0].address)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.garage.selected == top, 30, "the jump to the top node")
            # features: the SAE at L6 shows its active features; Enter ablates one and the run changes
            await goto(pilot, "L6")
            clean_prob = app.last_report.top[0][1]
            await pilot.press("f")
            features = app.screen.query_one("FeaturesView")
            await wait_for(pilot, lambda: not features.running, 300, "the features overview")
            assert features.overview is not None and features.overview.address == "L6.out", features.status()
            first = app.last_report
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.last_report is not first and app.job is None, 300, "the edited run")
            [item] = app.garage.interventions
            assert item.to_dict()["part"] == sae_name
            assert app.last_report.baseline_top[0][1] == pytest.approx(clean_prob, rel=1e-6)
            assert abs(app.last_report.top[0][1] - clean_prob) > 1e-6

    run(scenario())
