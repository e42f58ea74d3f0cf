"""Shared fixtures: each real model is opened once per session; GARAGE_HOME is a temp folder.

The GGUF conversion cache lives in the repository's ``.cache/`` (git-ignored) so repeated
runs and CI share one conversion instead of dequantising SmolLM2 every session.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("GARAGE_CACHE", str(REPO / ".cache" / "garage-test"))
os.environ["GARAGE_HOME"] = tempfile.mkdtemp(prefix="garage-test-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the cores: one intra-op thread each, set before torch is imported, so two
    # workers never spin four OpenMP threads on two cores (the suite ran 1.6x slower that way).
    # Subprocesses the tests start (the CLI, tmux, Ray, search workers) inherit it.
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")


@pytest.fixture(scope="session")
def smollm2():
    from engine.loading import open_model

    return open_model("smollm2-135m")


@pytest.fixture(scope="session")
def minilm():
    from engine.loading import open_model

    return open_model("minilm-l6")


@pytest.fixture(scope="session")
def smollm2_eager():
    """SmolLM2 with eager attention, for tests that read attention patterns."""
    from engine.loading import open_model

    return open_model("smollm2-135m", attn_implementation="eager")


@pytest.fixture(scope="session")
def smollm2_stitched_twin(smollm2):
    """SmolLM2, its twin widened to 960 by a known invertible map, and a ridge stitch fitted at
    L15.out from the one to the other on 6000 characters (with the loss check on 1 chunk)."""
    from engine.transfer.fitting import fit_stitch
    from engine.transfer.pairs import stitch_text
    from engine.transfer.widen import widened_loaded

    wide, known = widened_loaded(smollm2, 960, seed=0)
    report = fit_stitch(smollm2, wide, "L15.out", "L15.out", stitch_text(max_chars=6000), kind="ridge",
                        loss_chunks=1)
    return wide, known, report


@pytest.fixture()
def garage_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("GARAGE_HOME", str(home))
    return home


# ---- The quick lane (`-m "not slow"`) opens no real model ------------------------------------
# Tests that take a real-model fixture are marked slow at collection; a test that reaches a bundled
# model another way (open_model("smollm2-135m"), converted_folder(bundled_path(...))) while not
# marked slow fails at once, so the quick lane cannot quietly grow a minute-long load.
REAL_MODEL_FIXTURES = frozenset({"smollm2", "minilm", "smollm2_eager", "gemma"})
_lane: dict[str, str | None] = {"unmarked_test": None}


# xdist groups other than the file: tests that start a local Ray cluster run one after the
# other on one worker; the two files checking the stitch to SmolLM2's widened twin share its fit;
# the kill tests share one forkserver of children with the engine imported (tests/forked.py).
GROUPS = {"test_jobs.py": "ray", "test_search.py": "ray",
          "test_transfer_stitch.py": "widened-smollm2", "test_transfer_judge.py": "widened-smollm2",
          "test_robust_build_out.py": "forked", "test_robust_parts.py": "forked", "test_build_kill.py": "forked"}
# the groups that took longest in a measured run (60-240 s each on 2 cores), handed out first so
# that none of them starts near the end and leaves the other workers idle; then by slow tests
LONG_GROUPS = ("ray", "widened-smollm2", "test_tui_habits.py", "test_transfer_cli.py", "test_tui_keyboard.py",
               "test_attribution_smollm2.py", "test_tui_snapshots.py", "test_fit_plan.py", "test_gemma_tui.py",
               "test_tmux_garage.py")


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core and one more (a test often waits on a subprocess, a Ray
    actor or the app's timers: two workers left a 2-core machine 18% idle), at most as many as
    3 GiB of available memory each allow (a worker opens SmolLM2, Gemma and MiniLM, ~2.5 GiB at its
    peak), and at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores += 1
    return max(1, min(cores, _available_memory() // (3 * 2**30), 8))


def _available_memory() -> int:
    """Memory a new process can have: MemAvailable counts the page cache as free (after a fresh
    install it holds gigabytes of wheels and model files; "free" pages alone gave two workers)."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 2 * 3 * 2**30


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark slow every test that uses a real-model fixture, before `-m "not slow"` deselects;
    group tests by file for xdist's ``loadgroup`` (a file's module fixtures are built once), and
    hand out ``LONG_GROUPS`` first, then the groups with the most slow tests, so no long group
    starts last and runs alone."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            name = item.path.name
            item.add_marker(pytest.mark.xdist_group(GROUPS.get(name, name)))
        # a fixture named in a parametrize value is fetched with request.getfixturevalue(name)
        params = getattr(getattr(item, "callspec", None), "params", {})
        named = {value for value in params.values() if isinstance(value, str)}
        uses = REAL_MODEL_FIXTURES & (set(getattr(item, "fixturenames", ())) | named)
        if uses and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
    group = {item: item.get_closest_marker("xdist_group").args[0] for item in items}
    weight: dict[str, int] = {}
    for item in items:
        weight[group[item]] = weight.get(group[item], 0) + (item.get_closest_marker("slow") is not None)
    rank = {name: len(LONG_GROUPS) - index for index, name in enumerate(LONG_GROUPS)}
    # stable: a group's own order is kept
    items.sort(key=lambda item: (-rank.get(group[item], 0), -weight[group[item]]))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # set before any fixture of this test runs, module- and session-scoped ones included
    _lane["unmarked_test"] = None if item.get_closest_marker("slow") else item.nodeid


def pytest_runtest_teardown(item):
    _lane["unmarked_test"] = None


def real_model_roots() -> list[Path]:
    """The bundled models' files and their GGUF conversions in the cache."""
    from engine.bundled import BUNDLED, bundled_path
    from engine.errors import ModelNotFoundError
    from engine.storage import cache_dir

    roots: list[Path] = []
    for name, entry in BUNDLED.items():
        if getattr(entry, "chunk_distributions", ()):
            # where the joined file lands; bundled_path would join the chunks, which is no check's job
            path = (cache_dir() / "bundled" / entry.subpath).resolve()
        else:
            try:
                path = bundled_path(name).resolve()
            except ModelNotFoundError:
                continue
        roots.append(path)
        if path.suffix == ".gguf":
            roots.extend(p.resolve() for p in (cache_dir() / "gguf").glob(f"{path.stem}*"))
    return roots


def refuse_real_model(what: object) -> None:
    """Fail the running test if it is unmarked and ``what`` is (inside) a bundled model."""
    test = _lane["unmarked_test"]
    if test is None or what is None:
        return
    path = Path(str(what)).resolve()
    if any(path == root or root in path.parents for root in real_model_roots()):
        pytest.fail(f"{test} opens the real model at {path} but is not marked @pytest.mark.slow "
                    "(the quick lane loads no real model)", pytrace=False)


def _install_real_model_guard() -> None:
    """Wrap the two doors to a real model's weights: GGUF conversion and weight loading."""
    import functools

    try:
        from engine import gguf_cache, loading
    except ImportError:  # the engine is broken; the tests will say so better than this guard
        return

    convert = gguf_cache.converted_folder

    @functools.wraps(convert)
    def guarded_convert(gguf_path, *args, **kwargs):
        refuse_real_model(gguf_path)
        return convert(gguf_path, *args, **kwargs)

    @functools.wraps(convert)
    def guarded_convert_on_open(gguf_path, *args, **kwargs):
        # open_model asks for the cached folder even for a structure-only open; only a conversion
        # is expensive here (a weight load is caught below)
        if not gguf_cache.check_entry(gguf_cache.cached_folder_for(gguf_path, kwargs.get("dtype", "float32"))).ok:
            refuse_real_model(gguf_path)
        return convert(gguf_path, *args, **kwargs)

    gguf_cache.converted_folder = guarded_convert
    if getattr(loading, "converted_folder", None) is convert:
        loading.converted_folder = guarded_convert_on_open
    load_weights = getattr(loading, "_load_weights", None)
    if load_weights is not None:
        @functools.wraps(load_weights)
        def guarded_load(source, *args, **kwargs):
            refuse_real_model(getattr(source, "file", None) or getattr(source, "folder", None))
            return load_weights(source, *args, **kwargs)

        loading._load_weights = guarded_load


def pytest_configure(config):
    _install_real_model_guard()


@pytest.fixture(scope="session")
def gemma():
    """Gemma-3-270M (Gemma 3: q/k norms, sliding-window layers, one KV head), opened once. The
    first open of a run converts the GGUF and its 262k-token tokenizer into GARAGE_CACHE."""
    from engine.loading import open_model

    return open_model("gemma3-270m")
