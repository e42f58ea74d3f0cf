"""The job runner: every backend returns each trial exactly once; a dead worker's trial is re-queued."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from engine.jobs import InProcessBackend, JobError, PoolBackend, make_backend


def square(spec: tuple[int, str]) -> tuple[int, int]:
    value, _ = spec
    return value * value, os.getpid()


def square_dying_once(spec: tuple[int, str]) -> tuple[int, int]:
    """Kills its own process the first time it sees value 2 (a marker file remembers)."""
    value, folder = spec
    marker = Path(folder) / "died"
    if value == 2 and not marker.exists():
        marker.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    return value * value, os.getpid()


def test_in_process_runs_every_trial_in_order():
    results = list(InProcessBackend().run(square, [(i, (i, "")) for i in range(5)]))
    assert [index for index, _ in results] == [0, 1, 2, 3, 4]
    assert [value for _, (value, _) in results] == [0, 1, 4, 9, 16]
    assert all(pid == os.getpid() for _, (_, pid) in results)


@pytest.mark.slow
def test_pool_requeues_the_trial_of_a_dead_worker(tmp_path):
    with PoolBackend(2) as pool:
        results = dict(pool.run(square_dying_once, [(i, (i, str(tmp_path))) for i in range(6)]))
        assert pool.requeued >= 1
    assert sorted(results) == list(range(6))  # every trial once: nothing lost, nothing twice
    assert {i: value for i, (value, _) in results.items()} == {i: i * i for i in range(6)}
    assert (tmp_path / "died").exists()
    assert all(pid != os.getpid() for _, pid in results.values())


def test_bad_worker_count_is_a_clear_error():
    with pytest.raises(JobError, match="at least 1"):
        make_backend(workers=0)


def test_ray_missing_or_present(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(JobError, match=r"model-garage\[ray\]"):
        make_backend(workers=2, ray="local")


@pytest.mark.slow
def test_ray_actor_death_is_requeued(tmp_path):
    pytest.importorskip("ray")
    backend = make_backend(workers=2, ray="local")
    try:
        results = dict(backend.run(square_dying_once, [(i, (i, str(tmp_path))) for i in range(5)]))
        assert backend.requeued == 1
    finally:
        backend.close()
    assert {i: value for i, (value, _) in results.items()} == {i: i * i for i in range(5)}
