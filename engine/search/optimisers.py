"""Optimisers from well-kept libraries behind one ask/tell shape: Optuna (TPE, NSGA-II) and CMA-ES.

Points are asked a batch at a time (the batch is the worker count for Optuna, a CMA-ES
generation for ``cma``) and told back in trial order, so a run with the same seed and batch
asks the same points whether or not it was interrupted — the journal replays what it holds.
"""

from __future__ import annotations

import warnings
from typing import Any

from engine.search.spec import SearchSpec, SearchSpecError

WARM_SIGMA = 0.15  # CMA-ES step size around a warm start's prior point (0.3 from the centre without one)


class Optimiser:
    """``ask(n)`` → up to ``n`` points in [0, 1]^d; ``tell`` takes their objective values in the same order."""

    batch = 1

    def ask(self, limit: int) -> list[list[float]]:
        raise NotImplementedError

    def tell(self, values: list[list[float]]) -> None:
        raise NotImplementedError


class OptunaOptimiser(Optimiser):
    def __init__(self, spec: SearchSpec, batch: int, warm: list[list[float]] | None = None) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if spec.optimiser == "nsga2":
            sampler: Any = optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=max(4, 2 * batch))
        else:
            sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=min(10, max(2, spec.budget // 4)))
        self._study = optuna.create_study(sampler=sampler, directions=["minimize"] * len(spec.objectives))
        self._names = spec.names
        for point in warm or []:  # asked first, in order; the sampler fills the knobs a warm start says nothing of
            self._study.enqueue_trial({name: value for name, value in zip(spec.names, point, strict=True)
                                       if name.startswith("drop.")})
        self._pending: list[Any] = []
        self.batch = batch

    def ask(self, limit: int) -> list[list[float]]:
        self._pending = [self._study.ask() for _ in range(min(self.batch, limit))]
        return [[float(trial.suggest_float(name, 0.0, 1.0)) for name in self._names] for trial in self._pending]

    def tell(self, values: list[list[float]]) -> None:
        for trial, trial_values in zip(self._pending, values, strict=True):
            self._study.tell(trial, trial_values if len(trial_values) > 1 else trial_values[0])
        self._pending = []


class CmaOptimiser(Optimiser):
    def __init__(self, spec: SearchSpec, batch: int, warm: list[list[float]] | None = None) -> None:
        with warnings.catch_warnings():  # cma warns on import when matplotlib (its plotting) is absent
            warnings.simplefilter("ignore", UserWarning)
            import cma

        if spec.dimension < 2:
            raise SearchSpecError("cmaes needs at least 2 searched coordinates; use optimiser tpe for one knob")
        popsize = batch_size(spec, batch)
        options = {"seed": spec.seed + 1,  # cma treats seed 0 as "pick one from the clock"
                   "bounds": [0.0, 1.0], "verbose": -9, "popsize": popsize}
        # a warm start centres the first generation on its prior point, tighter, and asks its points first
        x0, sigma = (warm[0], WARM_SIGMA) if warm else ([0.5] * spec.dimension, 0.3)
        self._es = cma.CMAEvolutionStrategy(x0, sigma, options)
        self._warm = [list(point) for point in warm or []]
        self._asked: list[Any] = []
        self.batch = popsize

    def ask(self, limit: int) -> list[list[float]]:
        if self._warm:
            self._es.inject(self._warm[:self.batch], force=True)
            self._warm = self._warm[self.batch:]
        self._asked = self._es.ask()
        return [[float(x) for x in point] for point in self._asked[:limit]]

    def tell(self, values: list[list[float]]) -> None:
        if len(values) == len(self._asked):  # a generation cut short by the budget is never told
            self._es.tell(self._asked, [v[0] for v in values])
        self._asked = []


def _log(value: int) -> float:
    import math

    return math.log(value)


def batch_size(spec: SearchSpec, workers: int) -> int:
    """Points asked at a time: the worker count, or for CMA-ES a generation (its default size, at least that)."""
    return max(workers, 4 + int(3 * _log(spec.dimension))) if spec.optimiser == "cmaes" else workers


def make_optimiser(spec: SearchSpec, workers: int, warm: list[list[float]] | None = None) -> Optimiser:
    """The spec's optimiser, asking ``workers`` points at a time (a CMA-ES generation for cmaes);
    ``warm`` points (a warm start's) are asked first."""
    if spec.optimiser == "cmaes":
        return CmaOptimiser(spec, workers, warm)
    return OptunaOptimiser(spec, workers, warm)
