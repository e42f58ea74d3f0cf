"""The bay's model card shows the fit plan the engine computes from the model's config."""

from __future__ import annotations

import pytest
from test_tui_support import goto, make_app, run, wait_for, wait_idle

pytestmark = pytest.mark.slow


def test_model_card_shows_the_fit_plan(smollm2, tmp_path, monkeypatch):
    from engine.fit_plan import plan_for_loaded
    from garage_tui.controller import Workbench
    from garage_tui.render_plan import human_bytes
    from garage_tui.widgets.bay_pane import BayPane

    planned_seqs: list[int] = []
    real_plan = Workbench.compute_plan

    def counting_plan(self, loaded, seq=128):
        planned_seqs.append(seq)
        return real_plan(self, loaded, seq)

    monkeypatch.setattr(Workbench, "compute_plan", counting_plan)

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(140, 50)) as pilot:
            await wait_idle(pilot)
            bay = app.query_one(BayPane)
            await wait_for(pilot, lambda: smollm2.name in app.workbench.plans and bay._planning is None, 60,
                           "the fit plan")
            await goto(pilot, "L3.mlp")
            assert "fit plan" not in str(app.query_one("#part-detail").render())  # only the model's card has it
            await goto(pilot, "model")
            card = str(app.query_one("#part-detail").render())
            return card, app.workbench.last_report.tokens, app.workbench.prompt, bay.copy_text()

    card, tokens, prompt, copied = run(scenario())
    assert tokens == len(smollm2.tokenizer(prompt).input_ids) > 1
    assert planned_seqs == [tokens], "the card plans once, at the prompt's length"
    expected = plan_for_loaded(smollm2, seq=tokens)
    assert expected.weight_bytes > 100 * 2**20  # 135M parameters at float32: a real figure, not a zero
    assert f"weights (float32): {human_bytes(expected.weight_bytes)}" in card
    assert f"{expected.n_parameters / 1e6:,.1f}M parameters" in card
    assert f"cpu {human_bytes(expected.devices[0].weight_bytes)}" in card
    assert f"KV cache (1×{tokens} tokens): {human_bytes(expected.kv_cache_bytes)}" in card
    assert f"peak: load {human_bytes(expected.load_peak_bytes)} · forward {human_bytes(expected.forward_peak_bytes)}" \
        in card
    assert copied is not None and copied[0] == "model" and human_bytes(expected.weight_bytes) in copied[1]
