"""Interventions from the engine bay: ablate, mean-ablate, scale and steer the selected part.

Ablations and scales are plain data and toggle at once. A steer needs a vector: the engine
computes it from positive and negative prompts in a thread worker, then the steer toggles and
the prompt re-runs so the bay and the diagnostics show before and after.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.worker import get_current_worker

from garage_tui.messages import JobCancelled, SteerComputed, error_line, job_stopped
from garage_tui.screens.steer import SteerRequest, SteerScreen

SCALE_FACTOR = 0.5
STEERABLE = ("layer",)


class EditsMixin:
    """The bay's intervention keys, mixed into ``GarageApp``."""

    last_steer: SteerRequest | None = None

    def intervention_rows(self) -> list[dict[str, Any]]:
        if self.garage is None:
            return []
        return [dict(item.to_dict(), describe=item.describe()) for item in self.garage.interventions]

    def marks(self) -> dict[str, list[str]]:
        marks: dict[str, list[str]] = {}
        for item in self.intervention_rows():
            if item["kind"] == "ablate":
                mark = "ablated" if item.get("mode") == "zero" else "mean-ablated"
            elif item["kind"] == "scale":
                mark = f"×{item.get('factor', 1):g}"
            elif item["kind"] == "steer":
                mark = f"steer {item.get('strength', 1):+g}"
            else:
                mark = item["kind"]
            marks.setdefault(item["address"], []).append(mark)
        return marks

    def action_toggle_intervention(self, kind: str) -> None:
        from engine import interventions

        part = self.selected_part
        if part is None:
            return
        try:
            if kind == "scale":
                item = interventions.scale(part.address, SCALE_FACTOR)
            else:
                item = interventions.ablate(part.address, "mean" if kind == "mean" else "zero")
            from engine.interventions import edits_for

            edits_for(self.loaded.anatomy, item)  # refuses an impossible edit now, not mid-run
        except Exception as exc:  # noqa: BLE001
            self.notify(error_line(exc), severity="error")
            return
        active = self.garage.toggle(item)
        self.notify(f"{'on' if active else 'off'}: {item.describe()} (r re-runs)")
        self.refresh_bay()

    def action_clear_interventions(self) -> None:
        self.garage.interventions.clear()
        self.notify("all interventions removed")
        self.refresh_bay()

    def action_steer_part(self) -> None:
        """``v``: steer the selected layer (ask for prompts), or take its active steer off."""
        part = self.selected_part
        if part is None:
            return
        if part.kind not in STEERABLE:
            self.notify(f"cannot steer {part.address} ({part.kind}): steering adds a vector to the residual "
                        "stream; select a layer such as L10 and press v", severity="warning")
            return
        active = [item for item in self.garage.interventions if item.kind == "steer" and item.address == part.address]
        if active:
            for item in active:
                self.garage.toggle(item)
            self.notify(f"off: {', '.join(item.describe() for item in active)}")
            self.refresh_bay()
            self.action_run_prompt()
            return

        def start(request: SteerRequest | None) -> None:
            if request is None:
                return
            self.last_steer = request
            self.begin_job("steer", f"steering vector for {part.address}…")
            self._compute_steer(part.address, request)

        self.push_screen(SteerScreen(part.address, self.last_steer), start)

    @work(thread=True, exclusive=True, group="steer")
    def _compute_steer(self, address: str, request: SteerRequest) -> None:
        from engine.interventions import steer_from_prompts

        worker = get_current_worker()
        try:
            item = steer_from_prompts(self.loaded, address, request.positive, request.negative, request.strength)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one notification
            self.post_message(job_stopped("steer", worker, exc))
            return
        self.post_message(JobCancelled("steer", worker) if worker.is_cancelled else SteerComputed(item))

    def on_steer_computed(self, message: SteerComputed) -> None:
        item = message.intervention
        active = self.garage.toggle(item)
        self.end_job(f"{'on' if active else 'off'}: {item.describe()}")
        self.notify(f"{'on' if active else 'off'}: {item.describe()}")
        self.refresh_bay()
        self.action_run_prompt()
