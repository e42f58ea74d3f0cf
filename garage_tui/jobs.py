"""One worker skeleton for every long job of the garage.

A job is a compute function ``(JobContext) -> Message | None``: it calls the workbench
controller (which calls the engine) and returns the past-tense message to post, or None when
it stopped on its cancel event. ``run_job`` is the only place a worker catches errors, turns
a cancel into ``JobCancelled`` and posts the result, so each job is a few lines of intent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from textual.message import Message
from textual.message_pump import MessagePump
from textual.worker import get_current_worker

from garage_tui.controller import JobContext
from garage_tui.messages import JobCancelled, JobProgressed, job_stopped

Compute = Callable[[JobContext], "Message | None"]
# At most this many seconds between two progress reports of one job reach the UI thread.
PROGRESS_INTERVAL = 0.1


def run_job(host: MessagePump, job: str, compute: Compute, model_lock: threading.Lock | None = None) -> None:
    """The body of every thread worker: compute, then post the result, a cancel or one error line.

    With ``model_lock`` the job waits for the model to be free first: hooks live on the shared
    modules, so two passes at once would see each other's edits and cancel events. A job
    superseded while it waits gives up at once.
    """
    worker = get_current_worker()
    if model_lock is not None:
        while not model_lock.acquire(timeout=0.05):
            if worker.is_cancelled:
                host.post_message(JobCancelled(job, worker))
                return
    try:
        _compute_and_post(host, job, compute, worker)
    finally:
        if model_lock is not None:
            model_lock.release()


class ProgressThrottle:
    """A job's progress callback that posts at most one ``JobProgressed`` per ``interval`` seconds.

    Engines report at every layer of every pass (hundreds a second); posting each one flooded
    the app's message queue, so on a busy machine a key pressed during a job (``q``) waited
    behind the backlog until the job ended. Reports in between are folded into the latest one,
    which a timer posts when the interval is up, so the bar never stays on a stale stage.
    """

    def __init__(self, post: Callable[[str, float | None], object], interval: float | None = None) -> None:
        self._post = post
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self._lock = threading.Lock()
        self._last = -self.interval
        self._latest: tuple[str, float | None] | None = None
        self._timer: threading.Timer | None = None
        self._closed = False
        self.posted = 0  # how many reports went out (tests bound it)

    def __call__(self, stage: str, fraction: float | None) -> None:
        with self._lock:
            if self._closed:
                return
            now = time.monotonic()
            wait = self._last + self.interval - now
            if wait > 0:
                self._latest = (stage, fraction)
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._last, self._latest = now, None
            self.posted += 1
            self._post(stage, fraction)  # under the lock: close() cannot slip in before it

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            latest, self._latest = self._latest, None
            if latest is None or self._closed:
                return
            self._last = time.monotonic()
            self.posted += 1
            self._post(*latest)  # under the lock: nothing is posted after close()

    def close(self) -> None:
        """No report after this one: the job's result (or cancel) is about to be posted."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


def _compute_and_post(host: MessagePump, job: str, compute: Compute, worker: Any) -> None:
    progress = ProgressThrottle(lambda stage, fraction: host.post_message(JobProgressed(job, stage, fraction)))
    context = JobContext(worker.cancelled_event, progress, host.post_message)
    try:
        result = compute(context)
    except Exception as exc:  # noqa: BLE001 - the one last-resort handler: every failure is one notification
        progress.close()
        host.post_message(job_stopped(job, worker, exc))
        return
    progress.close()
    if result is None or worker.is_cancelled:
        host.post_message(JobCancelled(job, worker))
        return
    host.post_message(result)


def start_job(host: Any, job: str, compute: Compute, *, group: str, name: str,
              model_lock: threading.Lock | None = None) -> None:
    """Run ``compute`` in a thread worker on ``host`` (exclusive within ``group``).

    Jobs that run the open model pass the workbench's ``model_lock`` so they take turns.
    """
    host.run_worker(lambda: run_job(host, job, compute, model_lock), thread=True, exclusive=True, group=group,
                    name=name)
