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
