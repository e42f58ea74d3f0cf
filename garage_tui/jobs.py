"""The garage's long work: thread workers that open models and run prompts, and the job line.

Workers compute through the engine and post past-tense messages; the handlers here (found by
Textual's naming convention, since a mixin's ``@on`` is not collected) only draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import work
from textual.widgets import ProgressBar
from textual.worker import Worker, WorkerState, get_current_worker

from garage_tui.messages import (
    JobCancelled,
    JobFailed,
    JobProgressed,
    ModelLoaded,
    RunFinished,
    StructureLoaded,
    error_line,
    job_stopped,
)
from garage_tui.widgets.diagnostics_pane import DiagnosticsPane


class JobsMixin:
    """Begin/end a job, open a model, run the prompt, cancel: mixed into ``GarageApp``."""

    job: str | None
    settings: Any

    def _progress_callback(self, job: str):
        def report(stage: str, fraction: float | None) -> None:
            self.post_message(JobProgressed(job, stage, fraction))

        return report

    def begin_job(self, job: str, text: str) -> None:
        self.job = job
        bar = self.query_one("#progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        self.set_status(text)
        self.refresh_bindings()

    def end_job(self, text: str = "") -> None:
        self.job = None
        self.query_one("#progress", ProgressBar).display = False
        self.set_status(text)
        self.refresh_bindings()

    def open_model(self, spec: str, device: str = "cpu") -> None:
        self.begin_job("load", f"opening {spec}…")
        self._open_model(spec, device, self._structure_first(spec))

    def _structure_first(self, spec: str) -> bool:
        """Big checkpoints show their tree from config.json first, then load weights."""
        path = Path(spec).expanduser()
        try:
            files = [path] if path.is_file() else list(path.glob("*.safetensors")) if path.is_dir() else []
            size = sum(f.stat().st_size for f in files)
        except OSError:
            return False
        return size > self.settings.structure_first_gb * 1e9

    @work(thread=True, exclusive=True, group="model")
    def _open_model(self, spec: str, device: str, structure_first: bool) -> None:
        worker = get_current_worker()
        try:
            from engine.loading import open_model

            if structure_first:
                shell = open_model(spec, device=device, structure_only=True)
                self.post_message(StructureLoaded(shell.name, shell))
            loaded = open_model(spec, device=device, progress=self._progress_callback("load"),
                                cancel=worker.cancelled_event)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one notification
            self.post_message(job_stopped("load", worker, exc))
            return
        if not worker.is_cancelled:
            self.post_message(ModelLoaded(loaded.name, loaded))

    @work(thread=True, exclusive=True, group="run")
    def _run_prompt(self, prompt: str, selected: str | None, interventions: list[Any]) -> None:
        worker = get_current_worker()
        try:
            report = self._compute_run(prompt, selected, interventions, worker)
        except Exception as exc:  # noqa: BLE001
            self.post_message(job_stopped("run", worker, exc))
            return
        if report is None or worker.is_cancelled:
            self.post_message(JobCancelled("run", worker))
            return
        self.post_message(RunFinished(report))

    def _compute_run(self, prompt: str, selected: str | None, interventions: list[Any],
                     worker: Worker) -> dict[str, Any] | None:
        """Every number the panes draw for one prompt, from engine calls only."""
        from engine.runner import predict
        from engine.stats import residual_norms

        loaded = self.loaded
        steps = 4 if interventions else 2
        report: dict[str, Any] = {"prompt": prompt, "model": loaded.name, "selected": selected,
                                  "interventions": [i.describe() for i in interventions]}

        def step(index: int, stage: str) -> bool:
            self.post_message(JobProgressed("run", stage, index / steps))
            return not worker.is_cancelled

        if loaded.is_causal_lm:
            result = predict(loaded, prompt, interventions=interventions, top_k=5, cancel=worker.cancelled_event)
            report["top"] = [(guess.text, guess.prob) for guess in result.top]
            report["tokens"] = len(result.token_ids)
        if not step(1, "residual norms"):
            return None
        report["norms"] = residual_norms(loaded, prompt, interventions)
        if interventions:
            if not step(2, "baseline without edits"):
                return None
            if loaded.is_causal_lm:
                baseline = predict(loaded, prompt, top_k=5, cancel=worker.cancelled_event)
                report["baseline_top"] = [(g.text, g.prob) for g in baseline.top]
            if not step(3, "baseline norms"):
                return None
            report["baseline_norms"] = residual_norms(loaded, prompt, ())
        report["diagnostics"] = DiagnosticsPane.compute(loaded, prompt, selected, interventions, worker)
        return report

    def on_job_progressed(self, message: JobProgressed) -> None:
        bar = self.query_one("#progress", ProgressBar)
        if message.fraction is None:
            bar.update(total=None)
        else:
            bar.update(total=100, progress=round(message.fraction * 100))
        self.set_status(f"{message.job}: {message.stage}")

    def on_job_failed(self, message: JobFailed) -> None:
        self.end_job(f"{message.job} failed")
        self.notify(message.message, title=f"{message.job} failed", severity="error", timeout=8)

    def on_job_cancelled(self, message: JobCancelled) -> None:
        stale = message.worker
        if stale is not None and any(w is not stale and w.group == stale.group and w.is_running and not w.is_cancelled
                                     for w in self.workers):
            return  # a newer worker of the same group replaced this one: its job goes on
        self.end_job(f"{message.job} cancelled")
        self.notify(f"{message.job} cancelled", severity="warning")

    def action_cancel_job(self) -> None:
        """Esc: every running job gets its cancel event set; the engine stops at its next check."""
        if self.job is None:
            return
        for worker in list(self.workers):
            if worker.is_running and worker.group != "bench-validate":
                worker.cancel()
        self.set_status(f"cancelling {self.job}…")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            # Workers catch their own errors; this is the last guard against a traceback.
            self.end_job("job failed")
            error = event.worker.error or RuntimeError("a background job failed")
            self.notify(error_line(error), severity="error")
