"""Past-tense events that workers post; handlers on the app change state.

Workers never touch widgets: they compute through the engine, then post one of these with
plain numbers and strings, so the UI only draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.message import Message


@dataclass
class JobProgressed(Message):
    """A long job reached a new stage; ``fraction`` is None when unknown."""

    job: str
    stage: str
    fraction: float | None = None


@dataclass
class StructureLoaded(Message):
    """The model's tree is known (meta device); weights are still on their way."""

    name: str
    loaded: Any = None


@dataclass
class ModelLoaded(Message):
    """A model finished opening with its weights; the handler makes it the active one."""

    name: str
    loaded: Any = None


@dataclass
class JobFailed(Message):
    """A job stopped on an error; ``message`` is the one line shown to the user."""

    job: str
    message: str


@dataclass
class JobCancelled(Message):
    """A job's worker stopped on its cancel event; ``worker`` tells a superseded run from the live one."""

    job: str
    worker: Any = None


@dataclass
class RunFinished(Message):
    """The prompt ran; ``report`` is plain data (top tokens, norms, diagnostics)."""

    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class PartsChanged(Message):
    """The parts bin changed (added, tagged, removed, verified); ``note`` says what happened."""

    note: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BuildFinished(Message):
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecipeChecked(Message):
    """Validation of the bench's recipe finished; ``report`` is ``ValidationReport.to_dict()``."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def error_line(exc: BaseException) -> str:
    """One line for the user: a GarageError's own message, else the type and text."""
    from engine.errors import GarageError

    if isinstance(exc, GarageError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@dataclass
class AnalysisFinished(Message):
    """An on-demand analyzer (attention, head importance) finished; ``report`` is plain data."""

    kind: str
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class SteerComputed(Message):
    """A steering vector was computed from prompts; ``intervention`` is the steer to toggle."""

    intervention: Any = None


@dataclass
class InterventionsRestored(Message):
    """A session's edits were rebuilt on the open model; ``problems`` are the ones refused."""

    interventions: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def job_stopped(job: str, worker: Any, exc: BaseException) -> JobCancelled | JobFailed:
    """What a worker posts when ``exc`` ended it: a cancel it was asked for, or a failure in one line."""
    return JobCancelled(job, worker) if worker.is_cancelled else JobFailed(job, error_line(exc))
