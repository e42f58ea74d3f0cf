"""Pane 4, the build bench: assemble a recipe by keyboard, see it validated live, build it
with progress, and read the evaluation next to the sources'.

The recipe is a plain document (the same YAML/JSON ``garage build`` reads); every change
re-runs ``engine.build.validate_recipe`` in a worker (configs and headers only, no weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Static
from textual.worker import get_current_worker

from engine.storage import atomic_write_text, garage_home
from garage_tui.messages import (
    BuildFinished,
    JobFailed,
    JobProgressed,
    RecipeChecked,
    error_line,
    job_stopped,
)
from garage_tui.screens.ask import AskScreen
from garage_tui.widgets.base import garage_app

RECIPES = Path(__file__).resolve().parent.parent.parent / "recipes"
NO_RECIPE = "No recipe: n starts one from the open model, o opens a recipe file."


def identity_recipe(name: str, spec: str, n_layers: int) -> dict[str, Any]:
    """A recipe that takes every layer of one model in order (the bench's starting point)."""
    alias = "src"
    return {"recipe_version": 1, "name": f"{name}-hybrid", "sources": {alias: spec},
            "embed": alias, "final_norm": alias, "lm_head": alias,
            "layers": [{"take": f"{alias}.L0-{n_layers - 1}"}]}


def step_text(step: dict[str, Any]) -> str:
    """One plan row as a person reads it."""
    return yaml.safe_dump(step, default_flow_style=True, sort_keys=False, width=400).strip().strip("{}")


class BenchPane(Vertical):
    """Recipe steps on the left, validation and evaluation on the right."""

    BINDINGS = [
        Binding("n", "new_recipe", "New", id="bench.new"),
        Binding("o", "open_recipe", "Open", id="bench.open"),
        Binding("t", "add_take", "Take", id="bench.take"),
        Binding("b", "add_blend", "Blend", id="bench.blend"),
        Binding("e", "edit_step", "Edit step", id="bench.edit"),
        Binding("p", "pick_part", "Part→head", id="bench.pick_part"),
        Binding("d", "delete_step", "Delete", id="bench.delete"),
        Binding("K", "move_step(-1)", "Move up", show=False, id="bench.move_up"),
        Binding("J", "move_step(1)", "Move down", show=False, id="bench.move_down"),
        Binding("w", "write_recipe", "Write", show=False, id="bench.write"),
        Binding("B", "build", "Build", id="bench.build"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recipe: dict[str, Any] | None = None
        self.validation: dict[str, Any] | None = None
        self.evaluation: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        yield Static(NO_RECIPE, id="bench-status")
        with Horizontal(id="bench-body"):
            yield DataTable(id="bench-steps", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="bench-side"):
                yield Static("", id="bench-validation")
                yield DataTable(id="bench-eval", cursor_type="row", show_cursor=False)

    def on_mount(self) -> None:
        self.query_one("#bench-steps", DataTable).add_columns("#", "step")

    def focus_main(self) -> None:
        self.screen.set_focus(self.query_one("#bench-steps", DataTable))

    # ---- recipe document ----------------------------------------------------------------
    def recipe_document(self) -> dict[str, Any] | None:
        return self.recipe

    def restore_recipe(self, recipe: dict[str, Any] | None) -> None:
        self.set_recipe(recipe)

    def set_recipe(self, recipe: dict[str, Any] | None, cursor: int | None = None) -> None:
        """Show ``recipe`` and validate it in the background."""
        self.recipe = recipe
        table = self.query_one("#bench-steps", DataTable)
        table.clear()
        if recipe is None:
            self.validation = None
            self.query_one("#bench-status", Static).update(NO_RECIPE)
            self.query_one("#bench-validation", Static).update("")
            garage_app(self).refresh_bindings()
            return
        table.add_row("src", ", ".join(f"{k}={v}" for k, v in (recipe.get("sources") or {}).items()))
        for index, step in enumerate(recipe.get("layers") or []):
            table.add_row(str(index), step_text(step))
        if cursor is not None:
            table.move_cursor(row=cursor + 1)
        self.query_one("#bench-status", Static).update(f"recipe {recipe.get('name', '?')} · validating…")
        self._validate(recipe)
        garage_app(self).refresh_bindings()

    def selected_step(self) -> int | None:
        """Index into ``layers`` of the highlighted row (row 0 is the sources line)."""
        table = self.query_one("#bench-steps", DataTable)
        if self.recipe is None or table.cursor_row is None or table.cursor_row < 1:
            return None
        index = table.cursor_row - 1
        return index if index < len(self.document.get("layers") or []) else None

    @property
    def document(self) -> dict[str, Any]:
        """The recipe being edited (actions that need one are disabled without it)."""
        if self.recipe is None:
            raise RuntimeError("no recipe on the bench")
        return self.recipe

    def _edit_layers(self, change: Any, cursor: int | None = None) -> None:
        layers = list(self.document.get("layers") or [])
        change(layers)
        self.set_recipe({**self.document, "layers": layers}, cursor)

    # ---- workers --------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="bench-validate")
    def _validate(self, recipe: dict[str, Any]) -> None:
        try:
            from engine.build import load_recipe, validate_recipe

            report = validate_recipe(load_recipe(recipe)).to_dict()
        except Exception as exc:  # noqa: BLE001
            report = {"ok": False, "problems": [{"where": "recipe", "message": error_line(exc)}], "warnings": []}
        self.post_message(RecipeChecked([_problem(p) for p in report["problems"]],
                                        [_problem(w) for w in report["warnings"]], report))

    @work(thread=True, exclusive=True, group="bench")
    def _build_and_evaluate(self, recipe: dict[str, Any], out_dir: str) -> None:
        worker = get_current_worker()

        def progress(stage: str, fraction: float | None) -> None:
            self.post_message(JobProgressed("build", stage, fraction))

        try:
            from engine.build import build, evaluate, load_recipe

            result = build(load_recipe(recipe), out_dir, progress, worker.cancelled_event)
            # sources already open in the garage are scored as they are, not reopened
            from engine.sessions import _spec_of

            open_models = {_spec_of(m): m for m in garage_app(self).garage.models.values()}
            specs = list(dict.fromkeys((recipe.get("sources") or {}).values()))
            sources = [open_models.get(spec, spec) for spec in specs]
            evaluation = evaluate(str(result.out_dir), sources, progress, worker.cancelled_event)
        except Exception as exc:  # noqa: BLE001
            self.post_message(job_stopped("build", worker, exc))
            return
        self.post_message(BuildFinished({"out_dir": out_dir, "evaluation": evaluation.to_dict()}))

    # ---- drawing ----------------------------------------------------------------------------
    @on(RecipeChecked)
    def _on_checked(self, message: RecipeChecked) -> None:
        if self.recipe is None:
            return  # the recipe was taken off the bench while it was being checked
        self.validation = message.report
        name = self.recipe.get("name", "?")
        if message.report.get("ok"):
            summary = (f"recipe {name} · valid · {message.report.get('layers')} layers · "
                       f"{message.report.get('parameters', 0):,} params")
        else:
            summary = f"recipe {name} · {len(message.problems)} problem(s): fix them before building"
        self.query_one("#bench-status", Static).update(summary)
        lines = [f"✗ {p}" for p in message.problems] + [f"! {w}" for w in message.warnings]
        self.query_one("#bench-validation", Static).update("\n".join(lines) or "✓ no problems")
        garage_app(self).refresh_bindings()

    @on(BuildFinished)
    def _on_built(self, message: BuildFinished) -> None:
        self.evaluation = message.report["evaluation"]
        models = self.evaluation["models"]
        table = self.query_one("#bench-eval", DataTable)
        table.clear(columns=True)
        table.add_columns("", *[f"{m['name']} ({m['role']})" for m in models])
        table.add_row("perplexity", *[f"{m['perplexity']:.3f}" for m in models])
        table.add_row("bits/byte", *[f"{m['bits_per_byte']:.4f}" for m in models])
        table.add_row("top-1 agree", *[", ".join(f"{v:.3f}" for v in m["top1_agreement"].values() if v is not None)
                                        for m in models])
        for index, item in enumerate(models[0]["continuations"]):
            table.add_row(f"“{item['prompt'][:14]}”", *[m["continuations"][index]["continuation"][:24] for m in models])
        garage_app(self).post_message(JobProgressed("build", "done", 1.0))
        garage_app(self).end_job(f"built {message.report['out_dir']}")
        garage_app(self).notify(f"built and evaluated {message.report['out_dir']}")

    # ---- actions --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "new_recipe":
            return garage_app(self).loaded is not None
        if action in ("add_take", "add_blend", "write_recipe"):
            return self.recipe is not None
        if action in ("edit_step", "delete_step", "move_step"):
            return self.selected_step() is not None
        if action == "pick_part":
            app = garage_app(self)
            return self.selected_step() is not None and app.parts_bin is not None and app.loaded is not None
        if action == "build":
            # an invalid recipe may still be sent: the engine refuses it with every problem listed
            return self.recipe is not None and garage_app(self).job is None
        return True

    def _ask(self, question: str, value: str, done: Any) -> None:
        def answered(answer: str | None) -> None:
            if answer:
                try:
                    done(answer.strip())
                except (ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
                    garage_app(self).notify(f"not understood: {exc}", severity="error")

        garage_app(self).push_screen(AskScreen(question, value), answered)

    def action_new_recipe(self) -> None:
        from engine.sessions import _spec_of

        loaded = garage_app(self).loaded
        self.set_recipe(identity_recipe(loaded.name, _spec_of(loaded), loaded.anatomy.n_layers), cursor=0)

    def action_open_recipe(self) -> None:
        def load(answer: str) -> None:
            path = Path(answer).expanduser()
            try:
                document = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                garage_app(self).notify(f"cannot read recipe {path}: {exc}", severity="error")
                return
            from engine.sessions import recipe_shape_problem

            problem = recipe_shape_problem(document)
            if problem is not None:
                garage_app(self).notify(f"{path} is not a recipe: {problem}", severity="error")
                return
            self.set_recipe(document, cursor=0)

        self._ask("Open recipe file:", str(RECIPES) + "/", load)

    def _alias(self) -> str:
        return next(iter((self.recipe or {}).get("sources") or {"src": ""}))

    def action_add_take(self) -> None:
        at = self.selected_step()
        position = len(self.document["layers"]) if at is None else at + 1
        self._ask("Take layers (alias.Lk or alias.La-b):", f"{self._alias()}.L0",
                  lambda ref: self._edit_layers(lambda layers: layers.insert(position, {"take": ref}), position))

    def action_add_blend(self) -> None:
        at = self.selected_step()
        position = len(self.document["layers"]) if at is None else at + 1
        alias = self._alias()

        def add(answer: str) -> None:
            words = answer.split()
            numbers = [float(w) for w in words if w.replace(".", "", 1).isdigit()]
            refs = [w for w in words if "." in w and not w.replace(".", "", 1).isdigit()]
            if not refs:
                raise ValueError(f"name the layers to blend as alias.Lk, e.g. {alias}.L12 {alias}.L13")
            method = "slerp" if "slerp" in words else "linear"
            step: dict[str, Any] = {"blend": refs, "method": method}
            if method == "slerp":
                step["t"] = numbers[0] if numbers else 0.5
            else:
                step["weights"] = numbers or [1 / len(refs)] * len(refs)
            self._edit_layers(lambda layers: layers.insert(position, step), position)

        self._ask("Blend: refs, method and t or weights (e.g. smol.L12 smol.L13 slerp 0.5):",
                  f"{alias}.L12 {alias}.L13 slerp 0.5", add)

    def action_edit_step(self) -> None:
        index = self.selected_step()
        if index is None:
            return
        current = step_text(self.document["layers"][index])

        def edit(answer: str) -> None:
            step = yaml.safe_load("{" + answer + "}")
            if not isinstance(step, dict):
                raise ValueError("a step is a mapping such as take: smol.L3, attn: other.L3")
            self._edit_layers(lambda layers: layers.__setitem__(index, step), index)

        self._ask("Edit step (overrides: attn/mlp/norms: alias.Lk; heads: [{head: 3, from: alias.L11.h3}]):",
                  current, edit)

    def action_pick_part(self) -> None:
        index = self.selected_step()
        if index is None:
            return

        def chosen(slot: str) -> None:
            self._find_fits(slot, index)

        self._ask("Fill which head with a part from the bin? (e.g. L10.attn.h3)", "L10.attn.h3", chosen)

    @work(thread=True, exclusive=True, group="bench-fits")
    def _find_fits(self, slot: str, index: int) -> None:
        try:
            from garage_tui.widgets.parts_pane import PartsPane

            parts = garage_app(self).query_one(PartsPane).parts_bin().fits(garage_app(self).loaded, slot)
            names = [record.name for record in parts]
        except Exception as exc:  # noqa: BLE001
            self.post_message(JobFailed("parts bin", error_line(exc)))
            return
        garage_app(self).call_from_thread(self._offer_parts, slot, index, names)

    def _offer_parts(self, slot: str, index: int, names: list[str]) -> None:
        if not names:
            garage_app(self).notify(f"no part in the bin fits {slot}; extract one with x in the bay",
                                    severity="warning")
            return
        head = int(slot.rsplit(".h", 1)[1]) if ".h" in slot else 0

        def use(name: str) -> None:
            def change(layers: list[dict[str, Any]]) -> None:
                step = dict(layers[index])
                step["heads"] = [*step.get("heads", []), {"head": head, "part": name}]
                layers[index] = step

            self._edit_layers(change, index)

        self._ask(f"Parts that fit {slot}: {', '.join(names)}. Use:", names[0], use)

    def action_delete_step(self) -> None:
        index = self.selected_step()
        if index is None:
            return
        self._edit_layers(lambda layers: layers.pop(index), max(0, index - 1))

    def action_move_step(self, offset: int) -> None:
        index = self.selected_step()
        if index is None:
            return
        target = index + offset
        if not 0 <= target < len(self.document["layers"]):
            return

        def move(layers: list[dict[str, Any]]) -> None:
            layers[index], layers[target] = layers[target], layers[index]

        self._edit_layers(move, target)

    def action_write_recipe(self) -> None:
        name = self.document.get("name", "recipe")

        def write(answer: str) -> None:
            path = Path(answer).expanduser()
            try:
                atomic_write_text(path, yaml.safe_dump(self.recipe, sort_keys=False))
            except Exception as exc:  # noqa: BLE001
                garage_app(self).notify(error_line(exc), severity="error")
                return
            garage_app(self).notify(f"recipe written to {path}")

        self._ask("Write recipe to:", str(garage_home() / "recipes" / f"{name}.yaml"), write)

    def action_build(self) -> None:
        name = self.document.get("name", "hybrid")

        def start(answer: str) -> None:
            garage_app(self).begin_job("build", f"building {name}…")
            self._build_and_evaluate(dict(self.document), answer)

        self._ask("Build into folder (then evaluate against the sources):", str(garage_home() / "builds" / name), start)


def _problem(item: dict[str, Any]) -> str:
    line = f" (line {item['line']})" if item.get("line") else ""
    return f"{item.get('where', '')}{line}: {item.get('message', '')}"
