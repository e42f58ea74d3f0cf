"""Recipe search: a spec of knobs over a base recipe, optimised with Optuna or CMA-ES on a job backend,
journaled so every run resumes exactly."""

from __future__ import annotations

from engine.search.run import SearchReport, pareto_front, run_search
from engine.search.spec import SearchSpec, SearchSpecError, load_search_spec

__all__ = ["SearchReport", "SearchSpec", "SearchSpecError", "load_search_spec", "pareto_front", "run_search"]
