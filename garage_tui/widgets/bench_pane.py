"""Pane 4, the build bench: assemble a recipe by keyboard, see it validated live, build it
with progress, and read the evaluation next to the sources'.

The recipe is a plain document (the same YAML/JSON ``garage build`` reads); every change
posts a check request (configs and headers only, no weights); building posts a build
request. The app runs both through the workbench controller and hands the reports back.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from garage_tui.controller import BuildReport, RecipeCheck, Workbench
from garage_tui.jobs import start_job
from garage_tui.messages import BuildRequested, FitsRequested, JobCancelled, JobFailed, RecipeCheckRequested
from garage_tui.recipe_steps import (
    BAKE_HELP,
    attach_head,
    bake_step,
    readable_path,
    step_name,
    step_of_layer,
    step_text,
    take_range,
)
from garage_tui.screens.ask import AskScreen
from garage_tui.shipped import shipped_folder
from garage_tui.widgets.lists import KeyTable

RECIPES = shipped_folder("recipes")  # the checkout's recipes/, or the wheel's copy
NO_RECIPE = "No recipe: n starts one from the open model, o opens a recipe file."
CONTINUATION_WIDTH = 30
# the pane's own jobs (part kind → job line): their failures and cancels stay here
BIN_READS = {"direction": "reading the bin's directions", "blade": "reading the bin's blades"}


def identity_recipe(name: str, spec: str, n_layers: int) -> dict[str, Any]:
    """A recipe that takes every layer of one model in order (the bench's starting point)."""
    alias = "src"
    return {"recipe_version": 1, "name": f"{name}-hybrid", "sources": {alias: spec},
            "embed": alias, "final_norm": alias, "lm_head": alias,
            "layers": [{"take": f"{alias}.L0-{n_layers - 1}"}]}


class BenchPane(Vertical):
    """Recipe steps on the left, validation and evaluation on the right."""

    BINDINGS = [
        Binding("n", "new_recipe", "New", id="bench.new"),
        Binding("o", "open_recipe", "Open", id="bench.open"),
        Binding("t", "add_take", "Take", id="bench.take"),
        Binding("b", "add_blend", "Blend", id="bench.blend"),
        Binding("e", "edit_step", "Edit step", id="bench.edit"),
        Binding("p", "pick_part", "Part→head", id="bench.pick_part"),
        Binding("a", "add_bake", "Bake", show=False, id="bench.bake"),  # in ? and the palette
        Binding("l", "add_blade", "Blade", show=False, id="bench.blade"),
        Binding("d", "delete_step", "Delete", id="bench.delete"),
        Binding("K", "move_step(-1)", "Move up", show=False, id="bench.move_up"),
        Binding("J", "move_step(1)", "Move down", show=False, id="bench.move_down"),
        Binding("w", "write_recipe", "Write", show=False, id="bench.write"),
        Binding("B", "build", "Build", id="bench.build"),
    ]

    class PartsRead(Message):
        """The bin's parts of one kind, read in a worker for the question that offers them."""

        def __init__(self, names: list[str], ask: Callable[[list[str]], None]) -> None:
            super().__init__()
            self.names, self.ask = names, ask

    def __init__(self, workbench: Workbench, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.workbench = workbench
        self.recipe: dict[str, Any] | None = None
        self.validation: RecipeCheck | None = None
        self.evaluation: dict[str, Any] | None = None
        self._pending_slot: tuple[int, int] | None = None

    def compose(self) -> ComposeResult:
        yield Static(NO_RECIPE, id="bench-status")
        with Horizontal(id="bench-body"):
            yield KeyTable(id="bench-steps", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="bench-side"):
                yield Static("", id="bench-validation")
                yield KeyTable(id="bench-eval", cursor_type="row", show_cursor=False)

    def on_mount(self) -> None:
        self.query_one("#bench-steps", KeyTable).add_columns("#", "step")

    def focus_main(self) -> None:
        self.screen.set_focus(self.query_one("#bench-steps", KeyTable))

    def copy_text(self) -> tuple[str, str] | None:
        if self.recipe is None:
            return None
        return f"recipe {self.recipe.get('name', '?')}", yaml.safe_dump(self.recipe, sort_keys=False)

    # ---- recipe document ----------------------------------------------------------------
    def set_recipe(self, recipe: dict[str, Any] | None, cursor: int | None = None) -> None:
        """Show ``recipe`` and ask for it to be validated."""
        self.recipe = recipe
        table = self.query_one("#bench-steps", KeyTable)
        table.clear()
        status = self.query_one("#bench-status", Static)
        if recipe is None:
            self.validation = None
            status.update(NO_RECIPE)
            self.query_one("#bench-validation", Static).update("")
            self.refresh_bindings()
            return
        sources = ", ".join(f"{k}={v}" for k, v in (recipe.get("sources") or {}).items())
        table.add_row("sources", Text(sources))
        for index, step in enumerate(recipe.get("layers") or []):
            table.add_row(step_name(index), Text(step_text(step)))
        for index, step in enumerate(recipe.get("finish") or []):  # whole-model ops, after the layers
            table.add_row(f"finish {index + 1}", Text(step_text(step)))
        if cursor is not None:
            table.move_cursor(row=cursor + 1)
        status.update(Text(f"recipe {recipe.get('name', '?')} · validating…"))
        self.post_message(RecipeCheckRequested(recipe))
        self.refresh_bindings()

    def selected_step(self) -> int | None:
        """Index into ``layers`` of the highlighted row (row 0 is the sources line)."""
        table = self.query_one("#bench-steps", KeyTable)
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

    def _edit_layers(self, change: Callable[[list[Any]], Any], cursor: int | None = None) -> None:
        layers = list(self.document.get("layers") or [])
        change(layers)
        self.set_recipe({**self.document, "layers": layers}, cursor)

    # ---- drawing ----------------------------------------------------------------------------
    def show_check(self, recipe: dict[str, Any], check: RecipeCheck) -> None:
        """The validator's verdict, if it is about the recipe on the bench now."""
        if self.recipe is None or recipe is not self.recipe:
            return  # the recipe changed (or left the bench) while it was being checked
        self.validation = check
        name = self.recipe.get("name", "?")
        if check.ok:
            summary = f"recipe {name} · valid · {check.layers} layers · {check.parameters:,} params"
        else:
            summary = f"recipe {name} · {len(check.problems)} problem(s): fix them before building"
        self.query_one("#bench-status", Static).update(Text(summary))
        lines = [f"✗ {readable_path(p)}" for p in check.problems] + [f"! {readable_path(w)}" for w in check.warnings]
        self.query_one("#bench-validation", Static).update(Text("\n".join(lines) or "✓ no problems"))
        self.refresh_bindings()

    def show_build(self, report: BuildReport) -> None:
        """The evaluation beside the sources'; continuations in full, wrapped."""
        self.evaluation = report.evaluation
        models = self.evaluation["models"]
        table = self.query_one("#bench-eval", KeyTable)
        table.clear(columns=True)
        table.add_columns("", *[f"{m['name']} ({m['role']})" for m in models])
        table.add_row("perplexity", *[f"{m['perplexity']:.3f}" for m in models])
        table.add_row("bits/byte", *[f"{m['bits_per_byte']:.4f}" for m in models])
        table.add_row("top-1 agree", *[", ".join(f"{v:.3f}" for v in m["top1_agreement"].values() if v is not None)
                                        for m in models])
        for index, item in enumerate(models[0]["continuations"]):
            cells = [textwrap.fill(m["continuations"][index]["continuation"], CONTINUATION_WIDTH) for m in models]
            prompt = textwrap.fill(f"“{item['prompt']}”", 16)
            table.add_row(Text(prompt), *[Text(cell) for cell in cells], height=None)

    # ---- actions --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        workbench = self.workbench
        if action == "new_recipe":
            return workbench.loaded is not None
        if action in ("add_take", "add_blend", "write_recipe", "add_bake", "add_blade"):
            return self.recipe is not None
        if action == "delete_step":
            return self.selected_step() is not None or self._selected_finish() is not None
        if action in ("edit_step", "move_step"):
            return self.selected_step() is not None
        if action == "pick_part":
            return self.recipe is not None and workbench.has_parts_bin and workbench.loaded is not None
        if action == "build":
            # an invalid recipe may still be sent: the engine refuses it with every problem listed
            return self.recipe is not None and workbench.job is None
        return True

    def _ask(self, question: str, value: str, done: Callable[[str], Any]) -> None:
        def answered(answer: str | None) -> None:
            if answer:
                try:
                    done(answer.strip())
                except (ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
                    self.app.notify(f"not understood: {exc}", severity="error")

        self.app.push_screen(AskScreen(question, value), answered)

    def action_new_recipe(self) -> None:
        workbench = self.workbench
        loaded = workbench.loaded
        self.set_recipe(identity_recipe(loaded.name, workbench.spec_of_active(), loaded.anatomy.n_layers), cursor=0)

    def action_open_recipe(self) -> None:
        def load(answer: str) -> None:
            path = Path(answer).expanduser()
            try:
                document = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                self.app.notify(f"cannot read recipe {path}: {exc}", severity="error")
                return
            from engine.sessions import recipe_shape_problem

            problem = recipe_shape_problem(document)
            if problem is not None:
                self.app.notify(f"{path} is not a recipe: {problem}", severity="error")
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
        """``p``: fill a head of the hybrid (its own layer numbering) with a part from the bin."""
        def chosen(slot: str) -> None:
            layer, head = _slot(slot)
            found = step_of_layer(list(self.document.get("layers") or []), layer)
            if found is None:
                raise ValueError(f"the hybrid has no layer L{layer}")
            # the part must fit the source layer this hybrid layer comes from
            source = _source_layer(self.document["layers"][found[0]], found[1])
            self.post_message(FitsRequested(f"L{layer if source is None else source}.attn.h{head}", layer))
            self._pending_slot = (layer, head)

        self._ask("Fill which head of the hybrid with a part from the bin? (e.g. L10.attn.h3)", "L10.attn.h3", chosen)

    def offer_parts(self, slot: str, layer: int, names: list[str]) -> None:
        """The parts that fit (from the app's worker): ask which one fills the head."""
        if not names:
            self.app.notify(f"no part in the bin fits {slot}; extract one with x in the bay", severity="warning")
            return
        pending = self._pending_slot
        head = pending[1] if pending and pending[0] == layer else int(slot.rsplit(".h", 1)[1])
        loaded = self.workbench.loaded
        attn = loaded.anatomy.by_address.get("L0.attn") if loaded is not None else None
        gqa = bool(attn is not None and (attn.info or {}).get("gqa"))

        def use(name: str) -> None:
            layers, index = attach_head(list(self.document.get("layers") or []), layer, head, name, gqa)
            self.set_recipe({**self.document, "layers": layers}, index)

        self._ask(f"Parts that fit hybrid L{layer}.attn.h{head}: {', '.join(names)}. Use:", names[0], use)

    def action_add_bake(self) -> None:
        """``a``: a bake step (a finish op) writing a direction part from the bin into the weights.

        The catalog is read in a worker (it may be large or on a slow disk); the question opens
        with the bin's directions when they arrive.
        """
        self._offer_parts("direction", self._ask_bake, "_bake_directions")

    def _offer_parts(self, kind: str, ask: Callable[[list[str]], None], name: str) -> None:
        """Open ``ask`` with the bin's parts of ``kind``, read in a worker (the catalog may be large or
        on a slow disk); with no bin, at once with none."""
        workbench = self.workbench
        if not workbench.has_parts_bin:
            ask([])
            return
        # one group for every read: a second key supersedes the first read, so one question opens
        start_job(self, BIN_READS[kind], lambda ctx: self.PartsRead(workbench.read_part_names(kind), ask),
                  group="bench-bin-read", name=name)

    @on(PartsRead)
    def _parts_read(self, message: PartsRead) -> None:
        message.stop()
        if self.recipe is not None:  # the recipe may have left the bench while the bin was read
            message.ask(message.names)

    @on(JobFailed)
    def _bin_read_failed(self, message: JobFailed) -> None:
        kinds = {line: kind for kind, line in BIN_READS.items()}
        if message.job in kinds:
            message.stop()  # the app's own job line is not about this read
            self.app.notify(f"cannot offer the bin's {kinds[message.job]}s: {message.message}", severity="error",
                            timeout=8)

    @on(JobCancelled)
    def _bin_read_cancelled(self, message: JobCancelled) -> None:
        if message.job in BIN_READS.values():
            message.stop()  # a second key superseded the read: its own answer opens the question

    def _ask_bake(self, names: list[str]) -> None:
        offered = f"; directions in the bin: {', '.join(names[:6])}" if names else "; the bin has no direction yet"

        def add(answer: str) -> None:
            finish, at = with_weight_op(list(self.document.get("finish") or []), bake_step(answer))
            self.set_recipe({**self.document, "finish": finish}, len(self.document.get("layers") or []) + at)

        self._ask(f"Bake into the weights ({BAKE_HELP}){offered}:",
                  f"ablate-direction {names[0] if names else 'PART'}", add)

    def action_add_blade(self) -> None:
        """``l``: a blade op (a finish op) attaching a trained blade part from the bin to the hybrid.

        Read in a worker like the bake question's directions; the op goes last, after every op
        that changes the weights, since the blade is checked against the final model.
        """
        self._offer_parts("blade", self._ask_blade, "_blade_parts")

    def _ask_blade(self, names: list[str]) -> None:
        offered = (f"; blades in the bin: {', '.join(names[:6])}" if names else
                   "; the bin has no blade yet (`garage blade train` saves one)")

        def add(answer: str) -> None:
            finish = [*(self.document.get("finish") or []), blade_op(answer)]
            row = len(self.document.get("layers") or []) + len(finish) - 1
            self.set_recipe({**self.document, "finish": finish}, row)

        self._ask(f"Attach which blade part (by name or sha256 prefix){offered}:", names[0] if names else "PART", add)

    def _selected_finish(self) -> int | None:
        """Index into ``finish`` of the highlighted row, if it is a finish step."""
        table = self.query_one("#bench-steps", KeyTable)
        if self.recipe is None or table.cursor_row is None:
            return None
        index = table.cursor_row - 1 - len(self.recipe.get("layers") or [])
        return index if 0 <= index < len(self.recipe.get("finish") or []) else None

    def action_delete_step(self) -> None:
        finish = self._selected_finish()
        if finish is not None:
            steps = [s for i, s in enumerate(self.document.get("finish") or []) if i != finish]
            self.set_recipe({**self.document, "finish": steps} if steps else
                            {k: v for k, v in self.document.items() if k != "finish"},
                            len(self.document.get("layers") or []) + max(0, finish - 1))
            return
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

        def move(layers: list[Any]) -> None:
            layers[index], layers[target] = layers[target], layers[index]

        self._edit_layers(move, target)

    def action_write_recipe(self) -> None:
        from engine.storage import atomic_write_text, garage_home

        name = self.document.get("name", "recipe")

        def write(answer: str) -> None:
            path = Path(answer).expanduser()
            try:
                atomic_write_text(path, yaml.safe_dump(self.recipe, sort_keys=False))
            except OSError as exc:
                self.app.notify(f"cannot write {path}: {exc}", severity="error")
                return
            self.app.notify(f"recipe written to {path}")

        self._ask("Write recipe to:", str(garage_home() / "recipes" / f"{name}.yaml"), write)

    def action_build(self) -> None:
        from engine.storage import garage_home

        name = self.document.get("name", "hybrid")
        self._ask("Build into folder (then evaluate against the sources):", str(garage_home() / "builds" / name),
                  lambda answer: self.post_message(BuildRequested(dict(self.document), answer)))


def blade_op(answer: str) -> dict[str, Any]:
    """The ``finish:`` entry for the bench's blade answer: one part name (the recipe check finds it in the bin)."""
    words = answer.split()
    if len(words) != 1:
        raise ValueError("write one blade part's name (or sha256 prefix), e.g. a-into-b")
    return {"op": "blade", "part": words[0]}


def with_weight_op(finish: list[Any], step: dict[str, Any]) -> tuple[list[Any], int]:
    """``finish`` with ``step`` (an op that changes the weights) added, and its index: last, but before
    the trailing ops that attach a part beside the weights (a blade), which are checked against the
    final weights and so must follow every op that changes them."""
    from engine.build.model_ops import MODEL_OPS

    at = len(finish)
    while at > 0 and isinstance(finish[at - 1], dict) and finish[at - 1].get("op") in MODEL_OPS.names() and \
            MODEL_OPS.get(finish[at - 1]["op"]).attaches:
        at -= 1
    return [*finish[:at], step, *finish[at:]], at


def _slot(text: str) -> tuple[int, int]:
    """``L10.attn.h3`` (or ``L10.h3``) → ``(10, 3)``."""
    parts = text.strip().split(".")
    if len(parts) < 2 or not parts[0].startswith("L") or not parts[-1].startswith("h"):
        raise ValueError(f"name a head as Lk.attn.hN, e.g. L10.attn.h3, not {text!r}")
    return int(parts[0][1:]), int(parts[-1][1:])


def _source_layer(step: Any, offset: int) -> int | None:
    """The source model's layer number that step ``step`` makes at ``offset`` (takes only)."""
    taken = take_range(step)
    return None if taken is None else taken[1] + offset
