"""The quick lane's guard (tests/conftest.py) really stops an unmarked test from opening a real model."""

from __future__ import annotations

import pytest

from tests.conftest import REAL_MODEL_FIXTURES


def test_an_unmarked_test_cannot_load_a_bundled_model():
    from engine.loading import open_model

    with pytest.raises(pytest.fail.Exception, match="not marked @pytest.mark.slow"):
        open_model("minilm-l6")


def test_an_unmarked_test_cannot_convert_the_bundled_gguf():
    from engine.bundled import bundled_path
    from engine.gguf_cache import converted_folder

    with pytest.raises(pytest.fail.Exception, match="quick lane loads no real model"):
        converted_folder(bundled_path("smollm2-135m"))


def test_a_structure_only_open_of_a_bundled_config_is_allowed():
    """Reading a config is not loading a model: the guard must not be so wide it forbids this."""
    from engine.loading import open_model

    loaded = open_model("minilm-l6", structure_only=True)
    assert loaded.structure_only and loaded.config.num_hidden_layers == 6


def test_every_collected_test_using_a_real_model_fixture_is_marked_slow(request):
    using = [item for item in request.session.items if REAL_MODEL_FIXTURES & set(item.fixturenames)]
    assert all(item.get_closest_marker("slow") for item in using)


@pytest.mark.slow
def test_a_slow_test_may_load_a_bundled_model():
    from engine.loading import open_model

    assert open_model("minilm-l6").config.num_hidden_layers == 6
