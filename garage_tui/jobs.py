"""One worker skeleton for every long job of the garage.

A job is a compute function ``(JobContext) -> Message | None``: it calls the workbench
controller (which calls the engine) and returns the past-tense message to post, or None when
it stopped on its cancel event. ``run_job`` is the only place a worker catches errors, turns
a cancel into ``JobCancelled`` and posts the result, so each job is a few lines of intent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from textual.message import Message
from textual.message_pump import MessagePump
from textual.worker import get_current_worker

from garage_tui.controller import JobContext
from garage_tui.messages import JobCancelled, JobProgressed, job_stopped

Compute = Callable[[JobContext], "Message | None"]


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


def _compute_and_post(host: MessagePump, job: str, compute: Compute, worker: Any) -> None:
    def progress(stage: str, fraction: float | None) -> None:
        host.post_message(JobProgressed(job, stage, fraction))

    context = JobContext(worker.cancelled_event, progress, host.post_message)
    try:
        result = compute(context)
    except Exception as exc:  # noqa: BLE001 - the one last-resort handler: every failure is one notification
        host.post_message(job_stopped(job, worker, exc))
        return
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
