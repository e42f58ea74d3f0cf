"""The app as one workbench controller and views: one `r` is one forward pass (two with edits),
panes never reach into the app or each other, and the controller stays free of widgets."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_tui_support import goto, make_app, run, wait_for, wait_idle

TUI = Path(__file__).resolve().parent.parent / "garage_tui"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_panes_do_not_know_the_app_or_each_other():
    """Views take the workbench in their constructor and post requests; none imports the app or a sibling pane."""
    for path in sorted((TUI / "widgets").glob("*.py")):
        imported = _imports(path)
        assert "garage_tui.app" not in imported, f"{path.name} imports the app"
        source = path.read_text(encoding="utf-8")
        for sibling in ("BayPane", "DiagnosticsPane", "PartsPane", "BenchPane"):
            defined_here = f"class {sibling}(" in source
            assert defined_here or f"query_one({sibling}" not in source, f"{path.name} queries {sibling}"
        assert "garage_app(" not in source and ".garage." not in source, f"{path.name} reaches into the app"


def test_controller_imports_no_widgets_and_no_engine_at_module_level():
    imported = _imports(TUI / "controller.py")
    assert not {name for name in imported if name.startswith(("textual", "rich"))}
    tree = ast.parse((TUI / "controller.py").read_text(encoding="utf-8"))
    top_level = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    # engine.bundled is the one torch-free engine module the shell may read early (the default model's name);
    # test_import_hygiene proves the first frame still comes before torch.
    early = {name for name in top_level if name.startswith("engine")} - {"engine.bundled"}
    assert not early, "torch would load before the first frame"


CORE = ["app.py", "controller.py", "views.py", "keymap.py", "factory.py", "widgets/bay_pane.py",
        "widgets/diagnostics_pane.py", "widgets/parts_pane.py", "widgets/bench_pane.py", "widgets/part_tree.py",
        "widgets/prompt_bar.py", "widgets/lists.py", "screens/ask.py", "screens/help.py", "screens/steer.py"]


def test_one_worker_skeleton():
    """The workbench's workers run through ``jobs.run_job``: no ``@work`` copies with their own try/except."""
    for name in CORE:
        path = TUI / name
        source = path.read_text(encoding="utf-8")
        assert "@work(" not in source, f"{path.relative_to(TUI)} defines its own worker"
        if path.name != "jobs.py":
            assert "get_current_worker" not in source, f"{path.relative_to(TUI)} runs its own worker body"


@pytest.mark.slow
def test_one_r_is_one_forward_pass_two_with_edits(smollm2, tmp_path):
    calls: list[int] = []
    handle = smollm2.model.register_forward_pre_hook(lambda module, args: calls.append(1))

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            calls.clear()
            first = app.last_report
            await pilot.press("r")
            await wait_for(pilot, lambda: app.last_report is not first and app.job is None, 60, "the run")
            assert len(calls) == 1, f"one r ran {len(calls)} forward passes"
            assert app.last_report.forward_passes == 1
            await goto(pilot, "L10.attn.h3")
            await pilot.press("a")  # an edit re-runs by itself: the pass with it plus one baseline
            await wait_for(pilot, lambda: app.last_report.interventions and app.job is None, 60, "the edited run")
            await wait_idle(pilot)
            calls.clear()
            first = app.last_report
            await pilot.press("r")
            await wait_for(pilot, lambda: app.last_report is not first and app.job is None, 60, "the run")
            assert len(calls) == 2, f"one r with edits ran {len(calls)} forward passes"
            # the numbers come from those passes: the diagnostics and the bay agree with the report
            report = app.last_report
            assert report.stats is not None and report.stats["absmax"] == 0.0
            assert report.baseline_stats is not None and report.baseline_stats["absmax"] > 0.1
            assert len(report.norms) == len(report.baseline_norms or []) == 30

    try:
        run(scenario())
    finally:
        handle.remove()
