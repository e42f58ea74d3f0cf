"""A full screen that runs one engine job at a time in a worker, reported on its own status line.

The transfer bench (``X``) and the search view (``S``) share this plumbing: start a job, show its
progress, and end it on its result, an error or a cancel. The worker's messages are stopped here
because the app's own job line (hidden under the screen) is not about these jobs. Each screen
keeps its own Esc, since they stop differently (a worker cancel; a stop between trials).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.screen import Screen
from textual.widgets import Static

from garage_tui.messages import JobCancelled, JobFailed, JobProgressed


class JobScreen(Screen[None]):
    """``job`` names the job in flight (None when idle); ``STATUS`` is the line that reports it."""

    STATUS: ClassVar[str] = ""  # the status Static's selector, e.g. "#transfer-status"
    GROUP: ClassVar[str] = ""  # the worker group: a new job of the screen replaces the last one

    def __init__(self) -> None:
        super().__init__()
        self.job: str | None = None

    def _status(self, line: str) -> None:
        self.query_one(self.STATUS, Static).update(Text(line))

    def _start(self, job: str, line: str, compute: Any, *, name: str,
               model_lock: threading.Lock | None = None) -> None:
        """Run ``compute`` as ``job`` in a thread worker; ``line`` says what it does until it reports."""
        from garage_tui.jobs import start_job

        self.job = job
        self._status(f"{line} · Esc stops")
        self.refresh_bindings()
        start_job(self, job, compute, group=self.GROUP, name=name, model_lock=model_lock)

    def _done(self, line: str) -> None:
        self.job = None
        self._status(line)
        self.refresh_bindings()

    def progressed(self, message: JobProgressed) -> None:
        """A screen that draws more than the status line from a progress report does it here."""

    def cancelled_line(self, job: str) -> str:
        return f"{job}: cancelled"

    @on(JobProgressed)
    def _progress(self, message: JobProgressed) -> None:
        message.stop()
        self.progressed(message)
        share = f" {message.fraction:.0%}" if message.fraction is not None else ""
        self._status(f"{self.job}: {message.stage}{share} · Esc stops")

    @on(JobFailed)
    def _failed(self, message: JobFailed) -> None:
        message.stop()
        self._done(f"{message.job} failed: {message.message}")

    @on(JobCancelled)
    def _cancelled(self, message: JobCancelled) -> None:
        message.stop()
        self._done(self.cancelled_line(message.job))
