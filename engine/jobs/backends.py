"""Where trials run: in this process, on a local spawn pool, or on Ray actors.

Every backend takes ``(index, spec)`` pairs and yields ``(index, result)`` as trials finish.
A worker that dies (killed, out of memory) is noticed; the trials it had not finished go back
on the queue, so nothing is lost and nothing is counted twice.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from engine.errors import GarageError
from engine.jobs.job import MAX_REQUEUES, JobError, TrialFailed, TrialFn
from engine.limits import MAX_WORKERS


def _call(fn: TrialFn, index: int, spec: Any) -> Any:
    try:
        return fn(spec)
    except GarageError:
        raise
    except Exception as exc:  # a trial bug: name the trial, keep the cause's text
        raise TrialFailed(f"trial {index} failed: {type(exc).__name__}: {exc}") from exc


class Backend:
    """The job interface: ``run`` yields ``(index, result)`` in completion order."""

    name = "backend"
    workers = 1
    requeued = 0  # trials handed out again after their worker died

    def run(self, fn: TrialFn, items: Iterable[tuple[int, Any]],
            cancel: threading.Event | None = None) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (a no-op in-process)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessBackend(Backend):
    """Trials one after another in the caller's process (nothing to start)."""

    name = "in-process"

    def run(self, fn: TrialFn, items: Iterable[tuple[int, Any]],
            cancel: threading.Event | None = None) -> Iterator[tuple[int, Any]]:
        for index, spec in items:
            if cancel is not None and cancel.is_set():
                return
            yield index, _call(fn, index, spec)


def _pool_worker_init() -> None:
    # One worker per core: nested torch threads would oversubscribe the machine.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # a job that does not need torch
        pass


def checked_workers(workers: int) -> int:
    """``--workers`` as asked, or a ``JobError`` naming the bound it is outside."""
    if workers < 1:
        raise JobError(f"--workers must be at least 1, got {workers}")
    if workers > MAX_WORKERS:
        raise JobError(f"--workers {workers:,} is over the garage's limit of {MAX_WORKERS:,}; ask for fewer")
    return workers


class PoolBackend(Backend):
    """A local pool of ``workers`` spawned processes; each keeps its own model cache between trials."""

    name = "pool"

    def __init__(self, workers: int) -> None:
        self.workers = checked_workers(workers)
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.workers, initializer=_pool_worker_init,
                                                 mp_context=multiprocessing.get_context("spawn"))
        return self._executor

    def run(self, fn: TrialFn, items: Iterable[tuple[int, Any]],
            cancel: threading.Event | None = None) -> Iterator[tuple[int, Any]]:
        queue = list(items)
        deaths: dict[int, int] = {}
        running: dict[Future, tuple[int, Any]] = {}
        while queue or running:
            if cancel is not None and cancel.is_set():
                self.close()
                return
            while queue and len(running) < self.workers:
                index, spec = queue.pop(0)
                try:
                    running[self._pool().submit(_call, fn, index, spec)] = (index, spec)
                except BrokenProcessPool:
                    queue.insert(0, (index, spec))
                    self._restart(running, queue, deaths)
            if not running:
                continue
            done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                index, spec = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    queue.insert(0, (index, spec))
                    deaths[index] = deaths.get(index, 0) + 1
                    broken = True
                    continue
                yield index, result
            if broken:
                self._restart(running, queue, deaths)

    def _restart(self, running: dict[Future, tuple[int, Any]], queue: list[tuple[int, Any]],
                 deaths: dict[int, int]) -> None:
        """A worker died: every unfinished trial goes back on the queue and the pool is rebuilt."""
        for future, (index, spec) in list(running.items()):
            if future.done() and future.exception() is None:
                continue  # finished before the break; collected by the caller's next wait
            queue.insert(0, (index, spec))
            running.pop(future)
        for index, count in deaths.items():
            if count > MAX_REQUEUES:
                raise JobError(f"trial {index} killed its worker {count} times; it is not a passing crash — "
                               "check its memory use or run it in-process to see the error")
        self.requeued += 1
        queue.sort(key=lambda item: item[0])
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class RayBackend(Backend):
    """One Ray actor per worker; ``address`` is ``auto`` (a running cluster, else a local one),
    ``local`` (always a fresh local instance with ``workers`` CPUs) or a cluster address."""

    name = "ray"

    def __init__(self, address: str, workers: int) -> None:
        try:
            import ray
        except ImportError as exc:
            raise JobError("the Ray backend needs the optional extra: pip install 'model-garage[ray]' "
                           "(or pip install ray)") from exc
        checked_workers(workers)
        self._ray = ray
        self.workers = workers
        self._started = False
        if not ray.is_initialized():
            # Local actors import trial functions by module name, so they get this process's path.
            local_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            try:
                if address == "local":
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, runtime_env=local_env)
                elif address == "auto":
                    ray.init(include_dashboard=False, log_to_driver=False, runtime_env=local_env)
                else:
                    ray.init(address=address, log_to_driver=False)
            except Exception as exc:  # Ray raises ConnectionError, ValueError, RuntimeError… for a bad address
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise JobError(f"cannot reach Ray at {address!r} ({first}); start a cluster with `ray start "
                               "--head`, or use --ray local") from exc
            self._started = True
        self._actor_class: Any = ray.remote(num_cpus=1)(_RayWorker)
        self._actors: list[Any] = [self._actor_class.remote() for _ in range(workers)]

    def run(self, fn: TrialFn, items: Iterable[tuple[int, Any]],
            cancel: threading.Event | None = None) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        queue = list(items)
        deaths: dict[int, int] = {}
        free = list(range(len(self._actors)))
        running: dict[Any, tuple[int, Any, int]] = {}
        while queue or running:
            if cancel is not None and cancel.is_set():
                return
            while queue and free:
                slot = free.pop(0)
                index, spec = queue.pop(0)
                running[self._actors[slot].run.remote(fn, index, spec)] = (index, spec, slot)
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in done:
                index, spec, slot = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError:
                    deaths[index] = deaths.get(index, 0) + 1
                    if deaths[index] > MAX_REQUEUES:
                        raise JobError(f"trial {index} killed its Ray actor {deaths[index]} times; check its "
                                       "memory use or run it in-process to see the error") from None
                    self.requeued += 1
                    self._actors[slot] = self._actor_class.remote()
                    queue.insert(0, (index, spec))
                    free.append(slot)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.as_instanceof_cause()
                    raise cause if isinstance(cause, GarageError) else TrialFailed(str(cause)) from None
                free.append(slot)
                yield index, result

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        if self._started:
            self._ray.shutdown()


class _RayWorker:
    """A long-lived Ray actor: its process keeps the worker cache (models opened once)."""

    def __init__(self) -> None:
        _pool_worker_init()

    def run(self, fn: TrialFn, index: int, spec: Any) -> Any:
        return _call(fn, index, spec)

    def pid(self) -> int:
        return os.getpid()


def make_backend(workers: int = 1, ray: str | None = None) -> Backend:
    """The backend the CLI flags ask for: Ray when ``ray`` is given, a pool for ``workers > 1``."""
    if ray:
        return RayBackend(ray, max(workers, 1))
    if checked_workers(workers) > 1:
        return PoolBackend(workers)
    return InProcessBackend()
