"""Helpers shared by the TUI tests (no tests here): build the app around the session model."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any


def make_garage(*loaded_models: Any) -> Any:
    """A fresh ``Garage`` holding already-open models, so no test reopens a model."""
    from engine.garage import Garage

    garage = Garage()
    for loaded in loaded_models:
        garage.models[loaded.name] = loaded
        garage.active = loaded.name
    return garage


def make_app(*loaded_models: Any, home: Path | None = None, session: Any = None, **options: Any) -> Any:
    """The real app from the shared factory, with the given models and a parts bin in ``home``."""
    from engine.parts import PartsBin
    from garage_tui.factory import build_app
    from garage_tui.settings import load_settings

    parts_bin = PartsBin(home) if home is not None else None
    if home is not None:
        # settings live beside the bin, so one test's theme never leaks into another's
        options.setdefault("settings", load_settings(home / "settings.yaml"))
    return build_app(make_garage(*loaded_models), parts_bin, session, **options)


async def wait_for(pilot: Any, condition: Any, timeout: float = 60.0, what: str = "condition") -> None:
    """Let the app work until ``condition()`` holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)
    await pilot.pause()


async def wait_idle(pilot: Any, timeout: float = 60.0) -> None:
    """Until no job runs (model load, prompt run, parts or bench job)."""
    app = pilot.app

    def idle() -> bool:
        # the first run starts by itself once the model is in; it counts as pending work
        started = app.loaded is not None and (app.last_report is not None or not app.has_weights
                                              or not app.prompt_text)
        return started and app.job is None and not any(w.is_running for w in app.workers)

    await wait_for(pilot, idle, timeout, "jobs to finish")


async def goto(pilot: Any, address: str) -> None:
    """Walk to ``address`` with the bay's go-to key, as a user would."""
    await pilot.press("1", "slash")
    await pilot.pause()
    for char in address:
        await pilot.press(char)
    await pilot.press("enter")
    await wait_for(pilot, lambda: pilot.app.garage.selected == address, 10, f"selection of {address}")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def hold(monkeypatch: Any, module: Any, name: str) -> Any:
    """Keep jobs that call ``module.name`` in flight until the returned event is set.

    Runs on SmolLM2 can finish within a key press; tests of what the UI shows *while* a job
    runs gate the engine call instead of racing it. A set cancel event releases it too.
    """
    import threading

    gate = threading.Event()
    real = getattr(module, name)

    def held(*args: Any, **kwargs: Any) -> Any:
        cancel = kwargs.get("cancel")
        deadline = time.monotonic() + 30
        # gate.wait returns as soon as the test opens the gate; the timeout only lets a cancel be seen
        while not gate.wait(0.01) and not (cancel is not None and cancel.is_set()) and time.monotonic() < deadline:
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, held)
    return gate
