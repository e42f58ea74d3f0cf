"""Real child processes for the kill tests, forked from a server that has the engine imported.

A kill -9 test needs a process of its own to kill mid-write; started as ``python -c CODE`` each
one imported torch and transformers anew (~7 CPU-s here, most of such a test). A
``multiprocessing`` forkserver imports them once per test process and forks each child from
that, so a child starts in a tenth of a second and is still a separate process with its own
pid, killed by a real SIGKILL. A child sees the environment the server started with, not a
test's later ``monkeypatch.setenv``: pass what varies as arguments.
"""

from __future__ import annotations

import functools
import multiprocessing
import sys
from multiprocessing.context import ForkServerContext

# what the children run, and what they import lazily on the way (a model's config and classes):
# imported in the server, before any child is forked
PRELOAD = ["tests.forked", "engine.build", "engine.parts", "engine.storage", "engine.loading", "engine.anatomy",
           "transformers.modeling_utils", "transformers.models.llama.modeling_llama", "safetensors.torch"]


class Child:
    """A forked child with the few ``subprocess.Popen`` members the kill tests use."""

    def __init__(self, process: multiprocessing.Process) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode  # negative signal number when killed, as Popen's

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        self.process.join(timeout)
        return self.returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.join(30)


def forked(code: str, *args: object) -> Child:
    """Run ``code`` as ``python -c code args…`` would (``sys.argv[1:]`` is ``args``), in a child process."""
    process = _context().Process(target=_run, args=(code, [str(arg) for arg in args]), daemon=True)
    process.start()
    return Child(process)


@functools.cache
def _context() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _run(code: str, args: list[str]) -> None:
    sys.argv = ["-c", *args]
    exec(compile(code, "<forked child>", "exec"), {"__name__": "__main__"})
