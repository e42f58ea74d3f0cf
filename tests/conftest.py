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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark slow every test that uses a real-model fixture, before `-m "not slow"` deselects."""
    for item in items:
        # a fixture named in a parametrize value is fetched with request.getfixturevalue(name)
        params = getattr(getattr(item, "callspec", None), "params", {})
        named = {value for value in params.values() if isinstance(value, str)}
        uses = REAL_MODEL_FIXTURES & (set(getattr(item, "fixturenames", ())) | named)
        if uses and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


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
