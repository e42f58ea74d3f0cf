"""Optimisers from well-kept libraries behind one ask/tell shape: Optuna (TPE, NSGA-II) and CMA-ES.

Points are asked a batch at a time (the batch is the worker count for Optuna, a CMA-ES
generation for ``cma``) and told back in trial order, so a run with the same seed and batch
asks the same points whether or not it was interrupted — the journal replays what it holds.
"""

from __future__ import annotations

import warnings
from typing import Any

from engine.search.spec import SearchSpec, SearchSpecError


class Optimiser:
    """``ask(n)`` → up to ``n`` points in [0, 1]^d; ``tell`` takes their objective values in the same order."""

    batch = 1

    def ask(self, limit: int) -> list[list[float]]:
        raise NotImplementedError

    def tell(self, values: list[list[float]]) -> None:
        raise NotImplementedError


class OptunaOptimiser(Optimiser):
    def __init__(self, spec: SearchSpec, batch: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if spec.optimiser == "nsga2":
            sampler: Any = optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=max(4, 2 * batch))
        else:
            sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=min(10, max(2, spec.budget // 4)))
        self._study = optuna.create_study(sampler=sampler, directions=["minimize"] * len(spec.objectives))
        self._names = spec.names
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
    def __init__(self, spec: SearchSpec, batch: int) -> None:
        with warnings.catch_warnings():  # cma warns on import when matplotlib (its plotting) is absent
            warnings.simplefilter("ignore", UserWarning)
            import cma

        if spec.dimension < 2:
            raise SearchSpecError("cmaes needs at least 2 searched coordinates; use optimiser tpe for one knob")
        popsize = max(batch, 4 + int(3 * _log(spec.dimension)))
        options = {"seed": spec.seed + 1,  # cma treats seed 0 as "pick one from the clock"
                   "bounds": [0.0, 1.0], "verbose": -9, "popsize": popsize}
        self._es = cma.CMAEvolutionStrategy([0.5] * spec.dimension, 0.3, options)
        self._asked: list[Any] = []
        self.batch = popsize

    def ask(self, limit: int) -> list[list[float]]:
        self._asked = self._es.ask()
        return [[float(x) for x in point] for point in self._asked[:limit]]

    def tell(self, values: list[list[float]]) -> None:
        if len(values) == len(self._asked):  # a generation cut short by the budget is never told
            self._es.tell(self._asked, [v[0] for v in values])
        self._asked = []


def _log(value: int) -> float:
    import math

    return math.log(value)


def make_optimiser(spec: SearchSpec, workers: int) -> Optimiser:
    """The spec's optimiser, asking ``workers`` points at a time (a CMA-ES generation for cmaes)."""
    if spec.optimiser == "cmaes":
        return CmaOptimiser(spec, workers)
    return OptunaOptimiser(spec, workers)
