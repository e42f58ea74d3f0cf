"""Run a search: ask the optimiser, evaluate trials on a job backend, journal them, write the best.

Trials already in the journal are replayed (their points must match what the optimiser asks,
which they do with the same seed and batch) instead of evaluated, so a killed run continues
where it stopped and ends with the same trials and best recipe as an uninterrupted one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import GarageError
from engine.jobs import Backend, InProcessBackend
from engine.progress import Progress, notify
from engine.search.journal import Journal, JournalError
from engine.search.optimisers import batch_size, make_optimiser
from engine.search.space import trial_recipe
from engine.search.spec import SearchSpec
from engine.search.trial import TrialResult, TrialTask, evaluate_trial
from engine.search.warm import WARM_COST, InfluenceTask, block_influence, ranking, screen_tasks, warm_points


@dataclass
class SearchReport:
    """A finished (or stopped) search: every trial, the best one, the Pareto front, the recipe file."""

    name: str
    objectives: list[str]
    optimiser: str
    backend: str
    workers: int
    trials: list[TrialResult]
    best: TrialResult | None
    pareto: list[int]
    evaluated: int  # trials run by this call (the rest came from the journal)
    requeued: int
    best_recipe: str | None = None
    stopped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "objectives": self.objectives, "optimiser": self.optimiser,
                "backend": self.backend, "workers": self.workers, "evaluated": self.evaluated,
                "replayed": len(self.trials) - self.evaluated, "requeued": self.requeued,
                "stopped": self.stopped, "best_recipe": self.best_recipe,
                "best": self.best.to_dict() if self.best else None, "pareto": self.pareto,
                "trials": [{k: v for k, v in t.to_dict().items() if k != "recipe"} for t in self.trials],
                **self.extra}


def pareto_front(trials: list[TrialResult]) -> list[int]:
    """Numbers of the trials no other trial beats on every objective (all minimised)."""
    front = []
    for t in trials:
        dominated = any(all(o <= s for o, s in zip(other.values, t.values, strict=True)) and other.values != t.values
                        for other in trials)
        if not dominated:
            front.append(t.number)
    return front


def write_best_recipe(result: TrialResult, path: Path, spec: SearchSpec) -> Path:
    """The best trial's recipe as a normal recipe file (atomic), ready for `garage build`."""
    from engine.build.recipe_parse import dump_recipe
    from engine.storage import atomic_write_text

    doc = dict(result.recipe)
    doc["name"] = f"{spec.name}-best"
    values = ", ".join(f"{o} {v:.4f}" for o, v in zip(spec.objectives, result.values, strict=True))
    doc["description"] = f"best of search {spec.name} (trial {result.number}: {values})"
    atomic_write_text(path, dump_recipe(doc))
    return path


def _check_replay(journal: Journal, tasks: list[TrialTask]) -> None:
    for task in tasks:
        known = journal.results.get(task.number)
        if known is not None and known.point != list(task.point):
            raise JournalError(f"{journal.path} trial {task.number} does not match this run's optimiser "
                               "(another library version?); pass a new --journal file")


def run_search(
    spec: SearchSpec,
    journal_path: Path,
    backend: Backend | None = None,
    on_trial: Callable[[TrialResult, bool], None] | None = None,
    cancel: threading.Event | None = None,
    best_recipe_path: Path | None = None,
    stop_after: int | None = None,
    progress: Progress | None = None,
) -> SearchReport:
    """Run ``spec`` to its budget on ``backend`` (in-process by default), journaling every trial.

    A warm start's pass runs first, as one job on ``backend``, and takes its share of the budget;
    it is recomputed (not journaled) on resume, deterministic like a trial. A ``screen`` warm start's
    single drops are journaled trials 0..N-1 (replayed on resume like any trial); they are reported
    under ``extra["warm_start"]["screen"]``, not among ``trials``, and are never the best (wrong depth).

    ``progress`` hears the warm start's steps (they are not trials, so ``on_trial`` never sees
    them). ``on_trial(result, replayed)`` is called per trial in trial order; ``stop_after`` stops after
    that many new evaluations (a test hook for interruption; ``cancel`` is the user's Esc).
    """
    backend = backend or InProcessBackend()
    extra: dict[str, Any] = {}
    warm = None
    journal = Journal(journal_path, spec, batch_size(spec, backend.workers))
    evaluated = 0  # new evaluations by this call, for stop_after (the screen's included)

    def stopped_early() -> SearchReport:
        return SearchReport(name=spec.name, objectives=spec.objectives, optimiser=spec.optimiser,
                            backend=backend.name, workers=backend.workers, trials=[], best=None, pareto=[],
                            evaluated=0, requeued=backend.requeued, stopped=True, extra=extra)

    if spec.warm_start:
        notify(progress, "warm start: block influence of every layer", 0.0)
        influence = next((bi for _, bi in backend.run(block_influence, [(0, InfluenceTask(spec.base,
                                                                                          spec.max_tokens))], cancel)),
                         None)
        if influence is None:  # cancelled during the pass: nothing to journal yet
            return stopped_early()
        extra["warm_start"] = {"kind": spec.warm_start, "evaluations": spec.warm_cost,
                               "block_influence": [round(bi, 6) for bi in influence],
                               "ranking": ranking(spec, influence)}
        singles = None
        if spec.screen_layers:
            screen = screen_tasks(spec, influence)
            _check_replay(journal, [t for _, t in screen])
            todo = [(t.number, t) for _, t in screen if t.number not in journal.results]
            if stop_after is not None:
                todo = todo[:max(stop_after - evaluated, 0)]
            layers = dict((t.number, layer) for layer, t in screen)
            for _, result in backend.run(evaluate_trial, todo, cancel):
                journal.append(result)
                evaluated += 1
                done = sum(t.number in journal.results for _, t in screen)  # replayed ones included
                notify(progress, f"warm start: without L{layers[result.number]} {result.values[0]:.4g} "
                                 f"({done}/{len(screen)} single drops)", done / len(screen))
            extra["warm_start"]["screen_evaluated"] = evaluated
            if any(t.number not in journal.results for _, t in screen):
                return stopped_early()  # the next run replays the finished single drops
            singles = {layer: journal.results[t.number].values[0] for layer, t in screen}
            extra["warm_start"]["screen"] = [{"layer": layer, "number": t.number,
                                              "values": journal.results[t.number].values} for layer, t in screen]
        warm = warm_points(spec, influence, singles)
        extra["warm_start"]["enqueued"] = len(warm)
    optimiser = make_optimiser(spec, backend.workers, warm)
    trials: list[TrialResult] = []
    new_trials = 0
    stopped = False
    number = spec.screen_layers  # journal numbers: the screen's single drops first, then the optimiser's trials
    end = spec.budget - (WARM_COST if spec.warm_start else 0)
    while number < end and not stopped:
        points = optimiser.ask(end - number)
        tasks = [TrialTask(number + i, tuple(point), trial_recipe(spec, point), tuple(spec.objectives),
                           spec.max_tokens) for i, point in enumerate(points)]
        _check_replay(journal, tasks)
        todo = [(t.number, t) for t in tasks if t.number not in journal.results]
        if stop_after is not None:
            todo = todo[:max(stop_after - evaluated, 0)]
        for _, result in backend.run(evaluate_trial, todo, cancel):
            journal.append(result)
            evaluated += 1
            new_trials += 1
        if any(t.number not in journal.results for t in tasks):
            stopped = True  # cancelled or stop_after: the next run picks up from the journal
            break
        batch = [journal.results[t.number] for t in tasks]
        for result in batch:
            if on_trial is not None:
                on_trial(result, result.number not in dict(todo))
        optimiser.tell([r.values for r in batch])
        trials.extend(batch)
        number += len(tasks)
    if not trials and not stopped:
        raise GarageError(f"search {spec.name} ran no trials; give it a budget of at least 1")
    best = min(trials, key=lambda t: (t.values[0], t.number)) if trials else None
    path = None
    if best is not None and not stopped:
        target = best_recipe_path or journal_path.with_name(journal_path.stem + ".best.yaml")
        path = str(write_best_recipe(best, target, spec))
    return SearchReport(name=spec.name, objectives=spec.objectives, optimiser=spec.optimiser, backend=backend.name,
                        workers=backend.workers, trials=trials, best=best, pareto=pareto_front(trials),
                        evaluated=new_trials, requeued=backend.requeued, best_recipe=path, stopped=stopped,
                        extra=extra)
