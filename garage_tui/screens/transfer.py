"""``X``: the transfer bench — fit a stitch from the open model (A) into another (B), see where the
two line up, carry the current steer across, judge it, and train a blade.

Keys: ``b`` picks B (a bundled name, a folder or a hub id), ``a`` sets the addresses and the
stitch kind, ``f`` fits the stitch (R², cosine, loss recovered), ``w`` sweeps every k-th layer
of both into a plotext heat map of R², ``t`` moves the bay's steer through the stitch and shows
B's next-token guesses before/after (mapped and B's own vector from the same prompts) next to
A's, ``J`` judges the moved direction on a bundled prompt set against B's native vector and
both random controls, the isotropic one and the split one (``TASK [stratified|random]`` picks how
the split cuts the prompts; ``engine.transfer.judge``), ``l`` trains a blade and draws its loss as it
falls (``engine.transfer.blade_train``). One job at a time; Esc stops it; ``q`` goes back.
Every number comes from the engine, imported only inside the worker; B and the last stitch stay
on the workbench (``workbench.transfer``) while the app runs.
"""

from __future__ import annotations

import re
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Static
from textual_plotext import PlotextPlot

from garage_tui.controller import JobContext
from garage_tui.messages import JobProgressed
from garage_tui.screens.ask import AskScreen
from garage_tui.screens.job_screen import JobScreen
from garage_tui.widgets.lists import KeyTable

KINDS = ("ridge", "lowrank", "ae")  # engine.transfer.stitch.KINDS, repeated so the screen does not import torch
SPLITS = ("stratified", "random")  # engine.transfer.judge.SPLITS (first = default), repeated for the same reason
TEXT_CHARS = 30_000  # of the bundled sample + pydoc text: a stitch in seconds on a CPU, R² already stable
SWEEP_POINTS = 5  # layers of each model in the sweep (every k-th, k = layers // 5)
GUESSES = 5
DEFAULT_JUDGE_TASK = "sentiment"
DEFAULT_BLADE = "antonyms 100"
_STEP = re.compile(r"step (\d+)/(\d+), loss ([-+0-9.eE]+|nan|inf)")


def other_bundled(name: str) -> str:
    """The bundled model to offer as B: a different family from A where one is bundled."""
    return "gemma3-270m" if name != "gemma3-270m" else "smollm2-135m"


def middle(n_layers: int) -> str:
    return f"L{n_layers // 2}.out"


def heat_cells(grid: list[list[float]]) -> list[list[float]]:
    """R² per layer pair scaled to 0…255 for plotext's matrix plot (negative R² is as dark as 0)."""
    return [[round(255 * min(max(value, 0.0), 1.0)) if value == value else 0 for value in row] for row in grid]


def top_guesses(guesses: list[Any], before: bool) -> list[tuple[str, float]]:
    """The top tokens of a prompt report's guesses, with edits (``before=False``) or without."""
    rows = [(g.text, g.prob_before if before else g.prob) for g in guesses]
    return sorted(((text, prob) for text, prob in rows if prob is not None), key=lambda row: -row[1])[:GUESSES]


def judge_request(line: str) -> tuple[str, str]:
    """``TASK [SPLIT]`` → ``(task, split)``; ValueError (one line naming the allowed splits) otherwise.

    Checked here, not by the engine in the worker, so a typo costs a notification and no job.
    """
    words = line.split()
    if len(words) == 2 and words[1] not in SPLITS:
        raise ValueError(f"unknown split '{words[1]}'; use one of: {', '.join(SPLITS)} (e.g. sentiment random)")
    if not 1 <= len(words) <= 2:
        raise ValueError(f"write a prompt set and optionally a split ({', '.join(SPLITS)}), e.g. sentiment random")
    return words[0], words[1] if len(words) == 2 else SPLITS[0]


JUDGED_COLUMNS = ["α×‖v_B‖", "native", "mapped", "mapped/native", "random", "vs random", "split", "vs split",
                  "damage×", "works (random)", "works (split)"]


def judged_rows(strengths: list[Any]) -> list[list[str]]:
    """One row per strength: the effects, the isotropic control and the split control side by side, and
    whether the mapped vector works under each control's rule (every number read off the engine's judgement)."""
    return [[f"{s.alpha:+g}", f"{s.native:+.4f}", f"{s.mapped:+.4f}", f"{s.fraction:.0%}",
             f"{s.random:.4f}", f"{s.over_random:.1f}×", f"{s.split:.4f}", f"{s.over_split:.1f}×",
             f"{s.damage_ratio:.2f}", "yes" if s.works else "no", "yes" if s.works_in_distribution else "no"]
            for s in strengths]


def blade_step(stage: str) -> tuple[int, int, float] | None:
    """``(step, steps, loss)`` from the blade trainer's progress line, else None."""
    match = _STEP.search(stage)
    return (int(match[1]), int(match[2]), float(match[3])) if match else None


class TransferScreen(JobScreen):
    """Setup line, status, numbers, guesses/judge table; the sweep heat map and the blade's loss."""

    BINDINGS = [
        Binding("b", "pick_b", "Model B", id="transfer.model_b"),
        Binding("a", "addresses", "Addresses", id="transfer.addresses"),
        Binding("f", "fit", "Fit stitch", id="transfer.fit"),
        Binding("w", "sweep", "Layer sweep", id="transfer.sweep"),
        Binding("t", "transfer", "Transfer steer", id="transfer.steer"),
        Binding("J", "judge", "Judge", id="transfer.judge"),
        Binding("l", "blade", "Train blade", id="transfer.blade"),
        Binding("escape", "stop", "Stop", id="transfer.stop"),
        Binding("q", "dismiss", "Back", id="transfer.close"),
    ]
    DEFAULT_CSS = """
    TransferScreen #transfer-body { height: 1fr; }
    TransferScreen #transfer-left { width: 1fr; }
    TransferScreen #transfer-right { width: 1fr; }
    TransferScreen PlotextPlot { height: 1fr; }
    TransferScreen #transfer-table { height: 1fr; }
    """
    STATUS = "#transfer-status"
    GROUP = "transfer"

    class BOpened(Message):
        def __init__(self, loaded: Any) -> None:
            super().__init__()
            self.loaded = loaded

    class Fitted(Message):
        def __init__(self, report: Any) -> None:
            super().__init__()
            self.report = report

    class Swept(Message):
        def __init__(self, sweep: Any) -> None:
            super().__init__()
            self.sweep = sweep

    class Transferred(Message):
        """Top guesses per column: A before/steered, B before/with the mapped vector/with its own vector."""

        def __init__(self, columns: dict[str, list[tuple[str, float]]], summary: str) -> None:
            super().__init__()
            self.columns, self.summary = columns, summary

    class Judged(Message):
        def __init__(self, judgement: Any) -> None:
            super().__init__()
            self.judgement = judgement

    class BladeTrained(Message):
        def __init__(self, report: Any) -> None:
            super().__init__()
            self.report = report

    def __init__(self, workbench: Any) -> None:
        super().__init__()
        self.workbench = workbench
        self.loaded_a = workbench.loaded
        state = workbench.transfer
        if state.get("a") is not self.loaded_a:
            state = {"b": state.get("b")}  # A changed since: the addresses and the stitch were A's
        self.loaded_b: Any = state.get("b")
        n_a = self.loaded_a.anatomy.n_layers
        self.address_a: str = state.get("address_a", middle(n_a))
        self.address_b: str = state.get("address_b", middle(self.loaded_b.anatomy.n_layers) if self.loaded_b
                                        else middle(n_a))
        self.kind: str = state.get("kind", "ridge")
        self.stitch_report: Any = state.get("stitch")
        self.sweep: Any = None
        self.judgement: Any = None
        self.blade_report: Any = None
        self.columns: dict[str, list[tuple[str, float]]] = {}
        self.losses: list[float] = []
        self.loss_steps: list[int] = []  # the training step of each loss: posts are throttled, so not 1, 2, 3…
        self.blade_steps = 0

    def compose(self) -> ComposeResult:
        with Vertical(id="transfer-box"):
            yield Static("Transfer · b model B · a addresses · f fit · w sweep · t transfer the steer · J judge · "
                         "l blade · Esc stops · q back", id="transfer-title")
            yield Static("", id="transfer-setup")
            yield Static("no job yet", id="transfer-status")
            with Horizontal(id="transfer-body"):
                with Vertical(id="transfer-left"):
                    yield Static("", id="transfer-metrics")
                    yield KeyTable(id="transfer-table", cursor_type="row", zebra_stripes=True)
                with Vertical(id="transfer-right"):
                    yield PlotextPlot(id="transfer-heat")
                    yield PlotextPlot(id="transfer-loss")

    def on_mount(self) -> None:
        self._setup()
        if self.stitch_report is not None:
            self._show_stitch(self.stitch_report)
        self.query_one("#transfer-table", KeyTable).focus()

    # ---- state shown ---------------------------------------------------------------------------
    def _remember(self) -> None:
        self.workbench.transfer.update(a=self.loaded_a, b=self.loaded_b, address_a=self.address_a,
                                       address_b=self.address_b, kind=self.kind, stitch=self.stitch_report)

    def _setup(self) -> None:
        b = self.loaded_b.name if self.loaded_b is not None else "none (b picks one)"
        stitch = ""
        if self.stitch_report is not None:
            report = self.stitch_report
            stitch = f" · stitch {report.stitch.kind} {report.address_a} → {report.address_b}"
        self.query_one("#transfer-setup", Static).update(Text(
            f"A {self.loaded_a.name} @ {self.address_a} → B {b} @ {self.address_b} · kind {self.kind}{stitch}"))
        self._remember()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.job is not None
        if action in ("fit", "sweep"):
            return self.job is None and self.loaded_b is not None
        if action in ("transfer", "judge", "blade"):
            return self.job is None and self.loaded_b is not None and self.stitch_report is not None
        if action in ("pick_b", "addresses"):
            return self.job is None
        return True

    # ---- jobs ----------------------------------------------------------------------------------
    def _run(self, job: str, line: str, compute: Any) -> None:
        # A is the app's open model: its passes take turns with the bay's (hooks are shared)
        self._start(job, line, compute, name=f"_transfer_{job}", model_lock=self.workbench.model_lock)

    def action_stop(self) -> None:
        self.workers.cancel_group(self, self.GROUP)
        if self.job is not None:
            self._status(f"{self.job}: stopping…")

    def _ask(self, question: str, value: str, done: Any) -> None:
        def answered(answer: str | None) -> None:
            if answer and answer.strip():
                done(answer.strip())

        self.app.push_screen(AskScreen(question, value), answered)

    def action_pick_b(self) -> None:
        """``b``: open model B in a worker (``A`` names the open model itself)."""
        def chosen(spec: str) -> None:
            if spec == "A":
                self.post_message(self.BOpened(self.loaded_a))
                return
            device = self.workbench.device

            def compute(ctx: JobContext) -> Message | None:
                from engine.loading import open_model

                loaded = open_model(spec, device=device, progress=ctx.progress, cancel=ctx.cancel)
                return None if ctx.cancel.is_set() else self.BOpened(loaded)

            self._run("open B", f"opening {spec}", compute)

        self._ask("Model B (bundled name, folder or hub id; A = the open model):", other_bundled(self.loaded_a.name),
                  chosen)

    def action_addresses(self) -> None:
        """``a``: A's address, B's address and the stitch kind on one line."""
        def chosen(line: str) -> None:
            words = line.split()
            kind = words[2] if len(words) > 2 else self.kind
            if len(words) < 2 or kind not in KINDS:
                self.app.notify(f"write A's address, B's address and a kind ({', '.join(KINDS)}), e.g. "
                                "L15.out L9.out ridge", severity="error")
                return
            self.address_a, self.address_b, self.kind = words[0], words[1], kind
            self._setup()

        self._ask("A's address, B's address, stitch kind:", f"{self.address_a} {self.address_b} {self.kind}", chosen)

    def action_fit(self) -> None:
        """``f``: fit the stitch on the bundled text and measure it on the held-out part."""
        loaded_a, loaded_b, address_a, address_b, kind = (self.loaded_a, self.loaded_b, self.address_a,
                                                          self.address_b, self.kind)

        def compute(ctx: JobContext) -> Message:
            from engine.transfer.fitting import fit_stitch
            from engine.transfer.pairs import stitch_text

            text = stitch_text(("sample", "pydoc"), max_chars=TEXT_CHARS)
            return self.Fitted(fit_stitch(loaded_a, loaded_b, address_a, address_b, text, kind=kind,
                                          cancel=ctx.cancel, progress=ctx.progress))

        self._run("fit", f"fitting a {kind} stitch {address_a} → {address_b}", compute)

    def action_sweep(self) -> None:
        """``w``: a ridge stitch for every k-th layer pair; the heat map shows where A and B line up."""
        loaded_a, loaded_b = self.loaded_a, self.loaded_b
        every_a = max(1, loaded_a.anatomy.n_layers // SWEEP_POINTS)
        every_b = max(1, loaded_b.anatomy.n_layers // SWEEP_POINTS)

        def compute(ctx: JobContext) -> Message:
            from engine.transfer.pairs import stitch_text
            from engine.transfer.sweep import sweep_layers

            text = stitch_text(("sample", "pydoc"), max_chars=TEXT_CHARS)
            return self.Swept(sweep_layers(loaded_a, loaded_b, text, every_a=every_a, every_b=every_b,
                                           cancel=ctx.cancel, progress=ctx.progress))

        self._run("sweep", f"sweeping every {every_a}th layer of A against every {every_b}th of B", compute)

    def _steer(self) -> Any:
        steers = [item for item in self.workbench.interventions() if item.kind == "steer"]
        return steers[0] if steers else None

    def action_transfer(self) -> None:
        """``t``: the bay's steer moved through the stitch; guesses of A and B before and after."""
        item = self._steer()
        report = self.stitch_report
        if item is None:
            self.app.notify("no steer on A: select a layer in the bay and press v, then come back", severity="warning")
            return
        if report.address_a not in (item.address, f"{item.address}.out"):
            self.app.notify(f"the steer is at {item.address} but the stitch reads {report.address_a}; press a to set "
                            f"A's address to {item.address}.out and f to fit", severity="warning")
            return
        loaded_a, loaded_b, prompt, address_b = self.loaded_a, self.loaded_b, self.workbench.prompt, report.address_b
        stitch = report.stitch

        def compute(ctx: JobContext) -> Message:
            from engine.analyzers.steering import steer_from_prompts
            from engine.interventions import steer
            from engine.prompt_report import prompt_report

            mapped = steer(address_b, stitch.map_direction(item.vector), item.strength)
            on_a = prompt_report(loaded_a, prompt, [item], None, top_k=GUESSES, cancel=ctx.cancel)
            on_b = prompt_report(loaded_b, prompt, [mapped], None, top_k=GUESSES, cancel=ctx.cancel)
            columns = {"A before": top_guesses(on_a.guesses, True), "A steered": top_guesses(on_a.guesses, False),
                       "B before": top_guesses(on_b.guesses, True), "B mapped": top_guesses(on_b.guesses, False)}
            origin = item.origin or {}
            summary = f"“{prompt}”: {item.describe()} on A, moved to B at {address_b} (same strength)"
            if origin.get("positive") and origin.get("negative"):
                # B's own vector from the same prompt pairs: what the mapped one should resemble
                native = steer_from_prompts(loaded_b, address_b.split(".")[0], origin["positive"], origin["negative"],
                                            item.strength, cancel=ctx.cancel)
                own = prompt_report(loaded_b, prompt, [native], None, top_k=GUESSES, cancel=ctx.cancel)
                columns["B native"] = top_guesses(own.guesses, False)
            return self.Transferred(columns, summary)

        self._run("transfer", f"moving {item.describe()} into {loaded_b.name}", compute)

    def action_judge(self) -> None:
        """``J``: judge the moved direction on a bundled prompt set against B's native vector and the
        controls; ``TASK [stratified|random]`` says how the split control cuts the task's prompts."""
        report, loaded_a, loaded_b = self.stitch_report, self.loaded_a, self.loaded_b

        def chosen(line: str) -> None:
            try:
                task_name, split = judge_request(line)
            except ValueError as exc:
                self.app.notify(str(exc), severity="error")
                return

            def compute(ctx: JobContext) -> Message:
                from engine.transfer.judge import judge_transfer
                from engine.transfer.prompts import load_task

                return self.Judged(judge_transfer(loaded_a, loaded_b, report.address_a, report.address_b,
                                                  report.stitch, load_task(task_name), split=split,
                                                  cancel=ctx.cancel, progress=ctx.progress))

            self._run("judge", f"judging the {task_name} direction moved into {loaded_b.name} ({split} split)",
                      compute)

        self._ask(f"Judge on which prompt set (sentiment, formality, language, antonyms, capitals), and how the "
                  f"split control cuts it ({', '.join(SPLITS)})?", f"{DEFAULT_JUDGE_TASK} {SPLITS[0]}", chosen)

    def action_blade(self) -> None:
        """``l``: train a blade (A's residual → B's at B's address, started from the stitch) on a task."""
        report, loaded_a, loaded_b = self.stitch_report, self.loaded_a, self.loaded_b

        def chosen(line: str) -> None:
            words = line.split()
            try:
                steps = int(words[1]) if len(words) > 1 else 100
            except ValueError:
                self.app.notify(f"write a task and a number of steps, e.g. {DEFAULT_BLADE}", severity="error")
                return
            self.losses, self.loss_steps, self.blade_steps = [], [], steps

            def compute(ctx: JobContext) -> Message:
                from engine.transfer.blade_data import load_blade_task
                from engine.transfer.blade_train import TrainSettings, train_blade_at

                settings = TrainSettings(steps=steps)
                return self.BladeTrained(train_blade_at(loaded_a, loaded_b, report.address_a, report.address_b,
                                                        load_blade_task(words[0]), settings, stitch=report.stitch,
                                                        cancel=ctx.cancel, progress=ctx.progress))

            self._run("blade", f"training a blade {report.address_a} → {report.address_b} on {words[0]}", compute)

        self._ask("Blade: task and steps (e.g. antonyms 100):", DEFAULT_BLADE, chosen)

    # ---- results -------------------------------------------------------------------------------
    @on(BOpened)
    def _b_opened(self, message: BOpened) -> None:
        self.loaded_b = message.loaded
        self.address_b = middle(message.loaded.anatomy.n_layers)
        self.stitch_report = None
        self._setup()
        self._done(f"B is {message.loaded.name} ({message.loaded.anatomy.n_layers} layers) · f fits a stitch")

    @on(Fitted)
    def _fitted(self, message: Fitted) -> None:
        self.stitch_report = message.report
        self.address_a, self.address_b = message.report.address_a, message.report.address_b
        self._setup()
        self._show_stitch(message.report)
        self._done(f"stitch fitted on {message.report.stitch.fit_pairs} pairs ({message.report.alignment})")

    def _show_stitch(self, report: Any) -> None:
        lines = [f"held-out R² {report.held_out.r2:.4f} · mean cosine {report.held_out.mean_cosine:.4f} "
                 f"over {report.held_out.pairs} pairs ({report.alignment})"]
        loss = report.loss
        if loss is not None:
            lines.append(f"loss: A {loss.loss_a:.4f} · B clean {loss.loss_b_clean:.4f} · stitched "
                         f"{loss.loss_stitched:.4f} · B zero {loss.loss_b_zero:.4f} · mean {loss.loss_b_mean:.4f}")
            lines.append(f"loss recovered {loss.recovered_vs_zero:.1%} (vs zero) · {loss.recovered_vs_mean:.1%} "
                         "(vs mean)")
        else:
            lines.append("loss recovered: tokens do not coincide, so B cannot run from A's positions")
        self.query_one("#transfer-metrics", Static).update(Text("\n".join(lines)))

    @on(Swept)
    def _swept(self, message: Swept) -> None:
        self.sweep = sweep = message.sweep
        widget = self.query_one("#transfer-heat", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        plt.matrix_plot(heat_cells(sweep.r2))
        plt.title(f"held-out R² (rows: A layers {sweep.layers_a}, columns: B layers {sweep.layers_b})")
        widget.refresh()
        layer_a, layer_b, score = sweep.best()
        self._done(f"sweep: best pair A L{layer_a} → B L{layer_b}, R² {score:.4f} ({sweep.alignment}) · "
                   f"a L{layer_a}.out L{layer_b}.out then f fits it")

    def _table(self, columns: list[str], rows: list[list[str]]) -> None:
        table = self.query_one("#transfer-table", KeyTable)
        table.clear(columns=True)
        table.add_columns(*columns)
        for row in rows:
            table.add_row(*[Text(cell) for cell in row])

    @on(Transferred)
    def _transferred(self, message: Transferred) -> None:
        self.columns = message.columns
        names = list(message.columns)
        rows = [[f"{cells[i][0]!r} {cells[i][1]:.3f}" if i < len(cells) else "" for cells in message.columns.values()]
                for i in range(GUESSES)]
        self._table(names, rows)
        self._done(message.summary)

    @on(Judged)
    def _judged(self, message: Judged) -> None:
        self.judgement = judged = message.judgement
        self._table(JUDGED_COLUMNS, judged_rows(judged.strengths))

        def verdict(works: bool) -> str:
            return "works" if works else "does not work"

        # the native ceilings say how far any map could get past each control on this task
        self._done(f"judge {judged.task} ({judged.split_kind} split): mapped {judged.mean_fraction():.0%} of native "
                   f"on average (+ {judged.mean_fraction(True):.0%}, − {judged.mean_fraction(False):.0%}), "
                   f"{judged.over_random:.1f}× random (native {judged.native_over_random:.1f}×), "
                   f"{judged.over_split:.1f}× split (native {judged.native_over_split:.1f}×), damage "
                   f"{judged.damage_ratio:.2f}× native · cosine {judged.cosine:.2f} (not judged by) · "
                   f"{verdict(judged.works)} vs random, {verdict(judged.works_in_distribution)} vs split")

    def progressed(self, message: JobProgressed) -> None:
        step = blade_step(message.stage) if self.job == "blade" else None
        if step is not None:
            self.loss_steps.append(step[0])
            self.losses.append(step[2])
            self.blade_steps = step[1]
            self._draw_losses(f"blade loss, step {step[0]}/{step[1]}")

    def _draw_losses(self, title: str) -> None:
        widget = self.query_one("#transfer-loss", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        if self.losses:
            plt.plot(self.loss_steps, self.losses)
        if self.blade_steps:
            plt.xlim(0, self.blade_steps)  # the whole run from the first point on, not only the steps so far
        plt.title(title)
        plt.xlabel("step")
        widget.refresh()

    @on(BladeTrained)
    def _blade_trained(self, message: BladeTrained) -> None:
        self.blade_report = report = message.report
        self.losses = list(report.log.losses)  # the trainer's own record replaces the live points
        self.loss_steps = list(range(1, len(self.losses) + 1))  # one loss per step, steps counted from 1
        self.blade_steps = len(self.losses)
        self._draw_losses(f"blade loss over {len(self.losses)} steps (final {report.log.final_loss:.3f})")
        held = report.held_out
        scores = (("blade", held.blade), ("blade off", held.off), ("random blade", held.random))
        self._table(["held-out", "loss", "accuracy"],
                    [[name, f"{score.loss:.4f}", f"{score.accuracy:.0%}"] for name, score in scores])
        self._done(f"blade at {report.address_b} (depth {report.depth:.0%}): held-out loss {held.blade.loss:.4f} vs "
                   f"off {held.off.loss:.4f}, random {held.random.loss:.4f} · "
                   f"{'helps' if held.helps else 'does not help'}")
