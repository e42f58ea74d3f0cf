"""Review findings for the build bench (issue 6): recipe parsing edge cases."""

from __future__ import annotations

from engine.build.recipe_parse import load_recipe


def test_boolean_blend_weights_and_t_are_refused() -> None:
    linear = load_recipe({"recipe_version": 1, "sources": {"a": "x"}, "embed": "a", "final_norm": "a",
                          "lm_head": "a", "layers": [{"blend": ["a.L0", "a.L1"], "weights": [True, False]}]})
    slerp = load_recipe({"recipe_version": 1, "sources": {"a": "x"}, "embed": "a", "final_norm": "a",
                         "lm_head": "a", "layers": [{"blend": ["a.L0", "a.L1"], "method": "slerp", "t": True}]})
    assert any("weights" in p.path for p in linear.problems)
    assert any(p.path.endswith(".t") for p in slerp.problems)
