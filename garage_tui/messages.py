"""The garage's messages: requests panes post, and past-tense events workers post.

Panes never call the app or each other: they post a request (``...Requested``) that bubbles
up to the app, which routes it to the workbench controller. Workers never touch widgets:
they compute through the controller, then post one of the past-tense events with a typed
report, and the app's handlers hand it to the pane that draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.message import Message

from garage_tui.controller import (
    AttentionReport,
    BuildReport,
    ImportanceReport,
    RecipeCheck,
    RunReport,
    error_line,
)

# ---- requests (pane → app) --------------------------------------------------------------------


@dataclass
class AttentionRequested(Message):
    """Read every head's attention for the prompt (diagnostics ``A``)."""


@dataclass
class ImportanceRequested(Message):
    """Rank the selected layer's heads by Δ loss when ablated (diagnostics ``I``)."""


@dataclass
class PartsRequested(Message):
    """Reload the parts bin, or change one part: ``verb`` is reload, tag, note, remove or verify."""

    verb: str = "reload"
    name: str = ""
    value: str = ""


@dataclass
class FitsRequested(Message):
    """Which parts in the bin fit ``slot`` of the open model, for bench step ``index``."""

    slot: str
    index: int


@dataclass
class RecipeCheckRequested(Message):
    """Validate ``recipe`` (configs and headers only)."""

    recipe: dict[str, Any]


@dataclass
class BuildRequested(Message):
    """Build ``recipe`` into ``out_dir`` and evaluate it against its sources."""

    recipe: dict[str, Any]
    out_dir: str


# ---- events (worker → app) --------------------------------------------------------------------


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
    """The prompt ran; ``report`` holds every number the bay and the diagnostics draw."""

    report: RunReport


@dataclass
class PartsChanged(Message):
    """The parts bin changed (added, tagged, removed, verified); ``note`` says what happened."""

    note: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FitsFound(Message):
    """The parts that fit ``slot`` (names), for bench step ``index``."""

    slot: str
    index: int
    names: list[str] = field(default_factory=list)


@dataclass
class BuildFinished(Message):
    report: BuildReport


@dataclass
class RecipeChecked(Message):
    """Validation of ``recipe`` finished (the bench ignores it when its recipe changed since)."""

    recipe: dict[str, Any]
    check: RecipeCheck


@dataclass
class AttentionRead(Message):
    report: AttentionReport


@dataclass
class ImportanceRead(Message):
    report: ImportanceReport


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
