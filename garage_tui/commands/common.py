"""Options and helpers every verb shares."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from engine.bundled import DEFAULT_MODEL  # torch-free: the CLI parser stays light

if TYPE_CHECKING:
    from engine.progress import Progress


def add_model_options(parser: argparse.ArgumentParser, optional_model: bool = False) -> None:
    if optional_model:
        parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                            help="bundled name, local folder, .safetensors/.gguf file or hub id (default: %(default)s)")
    else:
        parser.add_argument("model", help="bundled name (smollm2-135m, minilm-l6, gemma3-270m), local folder, "
                                          ".safetensors/.gguf file or hub id")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (accelerate device_map)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))


def open_from_args(args: argparse.Namespace, structure_only: bool = False, progress: Progress | None = None,
                   attach: bool = True):
    """Open ``args.model`` with the common options; a first GGUF conversion shows a bar on a terminal.

    A verb with a longer job passes its own ``progress`` so one bar covers the open and the job; a
    verb that only reads the weights passes ``attach=False`` (a carried blade's model A stays shut).
    """
    from engine.loading import open_model

    # verbs without add_model_options (parts fits) open on the defaults
    device, dtype = getattr(args, "device", "cpu"), getattr(args, "dtype", "float32")
    if progress is not None:
        return open_model(args.model, device=device, dtype=dtype, structure_only=structure_only, progress=progress,
                          attach=attach)
    with progress_bar(args, f"opening {args.model}") as own:
        return open_model(args.model, device=device, dtype=dtype, structure_only=structure_only, progress=own,
                          attach=attach)


def _finite(value: Any) -> Any:
    """NaN and ±inf become null: strict JSON parsers reject Python's NaN/Infinity tokens."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def print_json(document: Any) -> None:
    json.dump(_finite(document), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


# Piped output is read by programs and people with wide windows: print every value in full.
PIPED_WIDTH = 1000


def console(stream: TextIO | None = None):
    """A rich console on stdout (or ``stream``); not a terminal → wide, so no table cell is cut."""
    from rich.console import Console

    stream = stream or sys.stdout
    if stream.isatty() or "COLUMNS" in os.environ:
        return Console(file=stream)
    return Console(file=stream, width=PIPED_WIDTH)


def wants_progress(args: argparse.Namespace, stream: TextIO | None = None) -> bool:
    """A bar only for a person watching: stderr is a terminal and the output is not --json."""
    stream = stream or sys.stderr
    return stream.isatty() and not getattr(args, "json", False)


@contextlib.contextmanager
def progress_bar(args: argparse.Namespace, first_stage: str = "starting",
                 stream: TextIO | None = None) -> Iterator[Progress | None]:
    """The engine's ``progress(stage, fraction)`` callback drawn as one bar on stderr.

    Yields None when no bar is wanted (piped, or --json), so the engine skips the calls.
    A stage with an unknown fraction shows a pulsing bar; the ETA appears once rich can
    estimate a speed from two fractions.
    """
    stream = stream or sys.stderr
    if not wants_progress(args, stream):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with RichProgress(*columns, console=Console(file=stream), transient=True) as bar:
        task = bar.add_task(first_stage, total=1.0)
        reached = [0.0]

        def progress(stage: str, fraction: float | None) -> None:
            if fraction is None:  # unknown: a pulsing bar, the stage name still says what runs
                bar.update(task, description=stage[:60], total=None)
                return
            fraction = min(max(fraction, 0.0), 1.0)
            if fraction < reached[0]:  # a job that starts over (the next model, say) restarts the clock
                bar.reset(task, total=1.0)
            reached[0] = fraction
            bar.update(task, description=stage[:60], total=1.0, completed=fraction)

        yield progress
