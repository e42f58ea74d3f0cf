"""Recipe search on a tiny random Llama saved to a temp folder: spec validation, the space, the journal,
resume after kill -9, 1 vs 2 workers vs Ray, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from engine.build import load_recipe, validate_recipe
from engine.jobs import InProcessBackend, PoolBackend
from engine.loading import _model_class
from engine.search import SearchSpecError, load_search_spec, run_search
from engine.search.journal import JournalError
from engine.search.space import trial_recipe
from engine.search.trial import TrialTask, evaluate_trial
from tests.tiny_models import tiny_configs

ROOT = Path(__file__).resolve().parents[1]
LAYERS = 6


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A 6-layer random Llama (vocab 128, no tokenizer: scored on the text's bytes)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    doc = tiny_configs()["llama"].to_dict()
    doc.pop("layer_types", None)
    doc["num_hidden_layers"] = LAYERS
    config = type(tiny_configs()["llama"]).from_dict(doc)
    torch.manual_seed(0)
    _model_class(config).from_config(config).eval().save_pretrained(folder)
    return folder


def spec_doc(model: Path, **changes) -> dict:
    doc = {
        "search_version": 1, "name": "tiny-search",
        "recipe": {"recipe_version": 1, "name": "tiny", "sources": {"a": str(model)}, "embed": "a",
                   "final_norm": "a", "lm_head": "a", "layers": [{"take": f"a.L0-{LAYERS - 1}"}]},
        "parameters": [{"drop": [1, 4], "count": 2}, {"blend": 5, "with": "a.L4", "method": "slerp"},
                       {"heads": 0, "from": "a.L1", "which": [0, 1]}],
        "objectives": ["perplexity"], "optimiser": "tpe", "budget": 6, "seed": 3, "max_tokens": 96,
    }
    doc.update(changes)
    return doc


def test_spec_is_validated_before_anything_runs(tiny_llama):
    spec = load_search_spec(spec_doc(tiny_llama))
    assert spec.dimension == 4 + 1 + 1
    bad = [
        ({"parameters": [{"drop": [1, 9], "count": 2}]}, "output layer"),
        ({"parameters": [{"drop": [1, 4], "count": 4}]}, "how many"),
        ({"parameters": [{"blend": 5, "with": "b.L4"}]}, "fails validation"),
        ({"objectives": ["accuracy"]}, "objectives"),
        ({"objectives": ["perplexity", "bits_per_byte"], "optimiser": "tpe"}, "nsga2"),
        ({"search_version": 2}, "search_version"),
        ({"budget": 0}, "budget"),
        ({"colour": "red"}, "unknown key"),
    ]
    for change, message in bad:
        with pytest.raises(SearchSpecError, match=message):
            load_search_spec(spec_doc(tiny_llama, **change))


def test_point_to_recipe(tiny_llama):
    spec = load_search_spec(spec_doc(tiny_llama))
    # drop scores for L1..L4: the two highest (L3 at 0.9, L1 at 0.8) go; blend t=0.25; heads off
    doc = trial_recipe(spec, [0.8, 0.1, 0.9, 0.2, 0.25, 0.4])
    assert [layer.get("take") or layer.get("blend") for layer in doc["layers"]] == \
        ["a.L0", "a.L2", "a.L4", ["a.L5", "a.L4"]]
    assert doc["layers"][-1]["t"] == 0.25
    assert "heads" not in doc["layers"][0]
    with_heads = trial_recipe(spec, [0.8, 0.1, 0.9, 0.2, 0.25, 0.6])
    assert with_heads["layers"][0]["heads"] == [{"head": 0, "from": "a.L1.h0"}, {"head": 1, "from": "a.L1.h1"}]
    assert validate_recipe(load_recipe(with_heads)).ok


def test_trial_scores_the_built_hybrid(tiny_llama):
    """Dropping layers changes the score; the identity recipe scores like the source itself."""
    spec = load_search_spec(spec_doc(tiny_llama))
    drop = trial_recipe(spec, [0.8, 0.1, 0.9, 0.2, 0.0, 0.0])
    keep_all = dict(spec.base)
    a = evaluate_trial(TrialTask(0, (0.0,), drop, ("perplexity",), 96))
    b = evaluate_trial(TrialTask(1, (0.0,), keep_all, ("perplexity",), 96))
    assert a.layers == LAYERS - 2 and b.layers == LAYERS
    assert a.tokens_scored == b.tokens_scored == 95
    assert a.perplexity != b.perplexity
    # a random 128-token model is near uniform: perplexity near the vocabulary size
    assert 60 < b.perplexity < 260
    assert b.values == [b.perplexity]


def test_search_writes_a_checkable_best_recipe_and_resumes(tiny_llama, tmp_path):
    spec = load_search_spec(spec_doc(tiny_llama))
    journal = tmp_path / "run.jsonl"
    full = run_search(spec, journal)
    assert len(full.trials) == 6 and full.evaluated == 6
    assert full.best is not None and full.best.perplexity == min(t.perplexity for t in full.trials)
    best = load_recipe(Path(full.best_recipe))
    assert validate_recipe(best).ok
    assert best.to_dict()["layers"] == load_recipe(full.best.recipe).to_dict()["layers"]
    # the same journal again: everything replayed, nothing evaluated
    again = run_search(spec, journal)
    assert again.evaluated == 0 and [t.to_dict() for t in again.trials] == [t.to_dict() for t in full.trials]
    # an interrupted run (stopped after 4 new trials) then resumed equals the uninterrupted one
    part = tmp_path / "part.jsonl"
    first = run_search(spec, part, stop_after=4)
    assert first.stopped and first.evaluated == 4
    resumed = run_search(spec, part)
    assert resumed.evaluated == 2
    assert [t.to_dict() for t in resumed.trials] == [t.to_dict() for t in full.trials]
    # a changed spec refuses the journal
    with pytest.raises(JournalError, match="different search"):
        run_search(load_search_spec(spec_doc(tiny_llama, seed=4)), journal)


def test_cmaes_and_nsga2(tiny_llama, tmp_path):
    cma = run_search(load_search_spec(spec_doc(tiny_llama, optimiser="cmaes", budget=5)), tmp_path / "c.jsonl")
    assert len(cma.trials) == 5 and len({tuple(t.point) for t in cma.trials}) == 5
    nsga = run_search(load_search_spec(spec_doc(tiny_llama, optimiser="nsga2", budget=5,
                                                objectives=["perplexity", "bits_per_byte"])), tmp_path / "n.jsonl")
    assert all(len(t.values) == 2 for t in nsga.trials)
    assert nsga.pareto and set(nsga.pareto) <= {t.number for t in nsga.trials}


@pytest.mark.slow
def test_kill_minus_nine_then_resume_gives_the_same_best(tiny_llama, tmp_path, capsys):
    from garage_tui.cli import main

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_doc(tiny_llama, budget=8)))
    # the uninterrupted reference runs in this process (one interpreter start fewer); the killed and
    # the resumed searches are real commands
    assert main(["search", str(spec_path), "--journal", str(tmp_path / "full.jsonl"), "--json"]) == 0
    full_doc = json.loads(capsys.readouterr().out)
    journal = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "garage_tui.cli", "search", str(spec_path), "--journal",
                             str(journal), "--json"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        if journal.exists() and len(journal.read_text().splitlines()) >= 1 + 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(journal.read_text().splitlines()) - 1
    assert 3 <= done_before < 8
    resumed = subprocess.run([sys.executable, "-m", "garage_tui.cli", "search", str(spec_path), "--journal",
                              str(journal), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert doc["evaluated"] == 8 - done_before
    assert doc["trials"] == full_doc["trials"]
    assert doc["best"] == full_doc["best"]
    assert Path(doc["best_recipe"]).read_text().split("\n", 1)[1] == \
        Path(full_doc["best_recipe"]).read_text().split("\n", 1)[1]


@pytest.mark.slow
def test_one_worker_two_workers_and_ray_agree(tiny_llama, tmp_path):
    """Same trials on every backend → bit-identical results (Ray is a real local instance)."""
    spec = load_search_spec(spec_doc(tiny_llama, budget=4))
    tasks = [(i, TrialTask(i, (float(i),), trial_recipe(spec, [0.1 * i, 0.3, 0.5, 0.7, 0.2 * i, i % 2]),
                            ("perplexity",), 96)) for i in range(4)]
    one = dict(InProcessBackend().run(evaluate_trial, tasks))
    with PoolBackend(2) as pool:
        two = dict(pool.run(evaluate_trial, tasks))
    assert {i: r.to_dict() for i, r in one.items()} == {i: r.to_dict() for i, r in two.items()}
    pytest.importorskip("ray")
    from engine.jobs import make_backend

    ray_backend = make_backend(workers=2, ray="local")
    try:
        on_ray = dict(ray_backend.run(evaluate_trial, tasks))
    finally:
        ray_backend.close()
    assert {i: r.to_dict() for i, r in one.items()} == {i: r.to_dict() for i, r in on_ray.items()}


def test_torn_last_line_is_dropped_and_rerun(tiny_llama, tmp_path):
    spec = load_search_spec(spec_doc(tiny_llama, budget=3))
    journal = tmp_path / "torn.jsonl"
    full = run_search(spec, journal)
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # a kill mid-write
    resumed = run_search(spec, journal)
    assert resumed.evaluated == 1
    assert [t.to_dict() for t in resumed.trials] == [t.to_dict() for t in full.trials]
    assert len(journal.read_text().splitlines()) == 1 + 3


def test_pareto_front_keeps_only_undominated():
    from engine.search import pareto_front
    from engine.search.trial import TrialResult

    def result(number, a, b):
        return TrialResult(number, [], [a, b], a, b, 1, 1)

    trials = [result(0, 1.0, 5.0), result(1, 2.0, 2.0), result(2, 3.0, 3.0), result(3, 5.0, 1.0), result(4, 2.0, 2.0)]
    assert pareto_front(trials) == [0, 1, 3, 4]


def test_worker_counts_outside_their_bounds_are_refused():
    from engine.jobs.backends import checked_workers
    from engine.jobs.job import JobError

    assert checked_workers(2) == 2
    with pytest.raises(JobError, match="at least 1, got 0"):
        PoolBackend(0)
    with pytest.raises(JobError, match="over the garage's limit of 1,024"):
        PoolBackend(10**6)


def _hand_block_influence(folder: Path, max_tokens: int) -> list[float]:
    """BI from the plain transformers model: forward hooks on every decoder layer, cosine by hand."""
    from transformers import AutoModelForCausalLM

    from engine.sample_text import sample_text

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    raw = sample_text().encode("utf-8")[:max_tokens]
    ids = torch.tensor([[b % model.config.vocab_size for b in raw]])
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [layer.register_forward_hook(lambda mod, args, kwargs, out, i=i: seen.__setitem__(
        i, (kwargs.get("hidden_states", args[0] if args else None), out[0] if isinstance(out, tuple) else out)),
        with_kwargs=True) for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    influence = []
    for i in range(len(model.model.layers)):
        h_in, h_out = (t[0, 1:].double() for t in seen[i])
        cosine = (h_in * h_out).sum(-1) / (h_in.norm(dim=-1) * h_out.norm(dim=-1))
        influence.append(float(1 - cosine.mean()))
    return influence


def test_block_influence_matches_a_hand_computation(tiny_llama):
    from engine.search.warm import InfluenceTask, block_influence

    spec = load_search_spec(spec_doc(tiny_llama, warm_start="block-influence"))
    influence = block_influence(InfluenceTask(spec.base, 96))
    assert influence == pytest.approx(_hand_block_influence(tiny_llama, 96), abs=1e-5)
    assert len(influence) == LAYERS and all(0 < bi < 2 for bi in influence)


def test_warm_start_spec_is_validated(tiny_llama):
    assert load_search_spec(spec_doc(tiny_llama)).warm_start is None
    assert load_search_spec(spec_doc(tiny_llama, warm_start="block-influence")).warm_start == "block-influence"
    bad = [
        ({"warm_start": "shortgpt"}, "warm_start must be one of block-influence"),
        ({"warm_start": "block-influence", "parameters": [{"blend": 5, "with": "a.L4"}]}, "add a {drop"),
        ({"warm_start": "block-influence", "budget": 1}, "at least 2 with warm_start"),
    ]
    for change, message in bad:
        with pytest.raises(SearchSpecError, match=message):
            load_search_spec(spec_doc(tiny_llama, **change))
    # a warm start changes the trials, so a journal without one is refused
    plain = load_search_spec(spec_doc(tiny_llama))
    assert plain.fingerprint() != load_search_spec(spec_doc(tiny_llama, warm_start="block-influence")).fingerprint()


def test_warm_points_follow_the_ranking(tiny_llama):
    from engine.search.warm import prior_point, ranking, warm_points

    spec = load_search_spec(spec_doc(tiny_llama, warm_start="block-influence"))
    influence = [0.9, 0.3, 0.1, 0.4, 0.2, 0.5]  # candidates L1-L4: lowest BI L2, L4, L1, L3
    assert ranking(spec, influence) == [2, 4, 1, 3]
    prior = prior_point(spec, influence)
    assert prior[:4] == pytest.approx([0.9 - 0.8 * 2 / 3, 0.9, 0.1, 0.9 - 0.8 / 3]) and prior[4:] == [0.5, 0.5]

    def dropped(point):
        kept = {layer["take"] for layer in trial_recipe(spec, point)["layers"] if "take" in layer}
        return sorted(i for i in range(1, 5) if f"a.L{i}" not in kept)

    points = warm_points(spec, influence)
    # the 2 lowest-BI candidates, then each swapped for the next 2: L4 (weaker) first
    assert [dropped(p) for p in points] == [[2, 4], [1, 2], [1, 4], [2, 3], [3, 4]]


def test_warm_started_search_counts_its_pass_and_resumes(tiny_llama, tmp_path):
    from engine.search.warm import prior_point

    spec = load_search_spec(spec_doc(tiny_llama, warm_start="block-influence", budget=7))
    full = run_search(spec, tmp_path / "warm.jsonl")
    warm = full.to_dict()["warm_start"]
    assert warm["evaluations"] == 1 and warm["enqueued"] == 5
    assert len(full.trials) == 7 - 1 and full.evaluated == 6
    influence = warm["block_influence"]
    lowest = sorted(warm["ranking"][:2])
    first_kept = {layer.get("take") for layer in full.trials[0].recipe["layers"]}
    assert {f"a.L{i}" for i in lowest}.isdisjoint(first_kept)  # trial 0 drops the two lowest-BI layers
    part = tmp_path / "part.jsonl"
    assert run_search(spec, part, stop_after=3).stopped
    resumed = run_search(spec, part)
    assert resumed.evaluated == 3
    assert [t.to_dict() for t in resumed.trials] == [t.to_dict() for t in full.trials]
    cma = run_search(load_search_spec(spec_doc(tiny_llama, warm_start="block-influence", optimiser="cmaes",
                                               budget=4)), tmp_path / "cma.jsonl")
    # CMA-ES asks the prior point first (inside the bounds, so unchanged by its bound handling)
    assert len(cma.trials) == 3 and cma.trials[0].point[:4] == pytest.approx(prior_point(spec, influence)[:4])


def test_screen_spec_is_validated(tiny_llama):
    spec = load_search_spec(spec_doc(tiny_llama, warm_start="screen", budget=8))
    assert spec.screen_layers == 4 and spec.warm_cost == 5  # default 12, capped at the 4 drop candidates
    assert load_search_spec(spec_doc(tiny_llama, warm_start="screen", screen_layers=3)).screen_layers == 3
    bad = [
        ({"warm_start": "bogus"}, "one of block-influence, screen"),
        ({"warm_start": "screen", "screen_layers": 1}, r"from 2 \(the drop count\) to 4"),
        ({"warm_start": "screen", "screen_layers": 5}, r"from 2 \(the drop count\) to 4"),
        ({"warm_start": "screen", "screen_layers": "all"}, "screen_layers must be an integer"),
        ({"warm_start": "block-influence", "screen_layers": 3}, "add warm_start: screen"),
        ({"screen_layers": 3}, "add warm_start: screen"),
        ({"warm_start": "screen", "screen_layers": 3, "budget": 4}, "at least 5 with warm_start screen"),
        ({"warm_start": "screen", "parameters": [{"blend": 5, "with": "a.L4"}]}, "add a {drop"),
    ]
    for change, message in bad:
        with pytest.raises(SearchSpecError, match=message):
            load_search_spec(spec_doc(tiny_llama, **change))
    changes = [{"warm_start": "block-influence"}, {"warm_start": "screen"},
               {"warm_start": "screen", "screen_layers": 3}]
    prints = {load_search_spec(spec_doc(tiny_llama, **change)).fingerprint() for change in changes}
    assert len(prints) == 3  # a journal of one warm start is refused by another


def _dropped(spec, doc: dict) -> list[int]:
    kept = {layer["take"] for layer in doc["layers"] if "take" in layer}
    return sorted(i for i in range(1, 5) if f"a.L{i}" not in kept)


def test_screen_evaluates_single_drops_then_seeds_the_optimiser(tiny_llama, tmp_path):
    spec = load_search_spec(spec_doc(tiny_llama, warm_start="screen", screen_layers=3, budget=9))
    journal = tmp_path / "screen.jsonl"
    heard: list[tuple[str, float | None]] = []
    full = run_search(spec, journal, progress=lambda stage, fraction: heard.append((stage, fraction)))
    warm = full.to_dict()["warm_start"]
    # the warm start is not a trial: progress tells a watcher (the TUI's status line) what it does
    assert heard[0][0].startswith("warm start: block influence")
    assert [stage.split(" ")[3] for stage, _ in heard[1:]] == [f"L{s['layer']}" for s in warm["screen"]]
    assert [fraction for _, fraction in heard[1:]] == pytest.approx([1 / 3, 2 / 3, 1])
    assert warm["kind"] == "screen" and warm["evaluations"] == 1 + 3 and warm["screen_evaluated"] == 3
    # exactly the 3 lowest-BI candidates, each dropped alone, journaled as trials 0-2
    screen = warm["screen"]
    assert [s["layer"] for s in screen] == warm["ranking"][:3] and [s["number"] for s in screen] == [0, 1, 2]
    lines = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert [line["number"] for line in lines] == list(range(8))
    for s, line in zip(screen, lines, strict=False):
        base_layers = spec.base["layers"]
        alone = {**spec.base, "layers": [entry for i, entry in enumerate(base_layers) if i != s["layer"]]}
        by_hand = evaluate_trial(TrialTask(0, (0.0,), alone, ("perplexity",), 96))
        assert line["layers"] == LAYERS - 1 and line["values"] == s["values"] == [by_hand.perplexity]
    # the rest of the budget is the optimiser's; single drops are never its trials nor the best
    assert [t.number for t in full.trials] == [3, 4, 5, 6, 7] and full.evaluated == 5
    assert warm["evaluations"] + len(full.trials) == spec.budget
    assert full.best is not None and full.best.layers == LAYERS - 2
    # its first trial drops the two best single drops; the next swaps the weaker one for the third best
    best_first = [s["layer"] for s in sorted(screen, key=lambda s: (s["values"][0], s["layer"]))]
    assert _dropped(spec, full.trials[0].recipe) == sorted(best_first[:2])
    assert _dropped(spec, full.trials[1].recipe) == sorted([best_first[0], best_first[2]])


def test_screened_search_resumes_mid_screen_and_mid_search(tiny_llama, tmp_path):
    from engine.search.warm import prior_point

    spec = load_search_spec(spec_doc(tiny_llama, warm_start="screen", screen_layers=3, budget=8))
    full = run_search(spec, tmp_path / "full.jsonl")
    for stop in (2, 5):  # inside the screen, then inside the optimiser's trials
        part = tmp_path / f"part{stop}.jsonl"
        first = run_search(spec, part, stop_after=stop)
        assert first.stopped and len(part.read_text().splitlines()) == 1 + stop
        resumed = run_search(spec, part)
        assert not resumed.stopped and resumed.evaluated == 4 - max(stop - 3, 0)
        assert resumed.to_dict()["warm_start"]["screen"] == full.to_dict()["warm_start"]["screen"]
        assert [t.to_dict() for t in resumed.trials] == [t.to_dict() for t in full.trials]
    cma_spec = load_search_spec(spec_doc(tiny_llama, warm_start="screen", screen_layers=3, optimiser="cmaes",
                                         budget=6))
    cma = run_search(cma_spec, tmp_path / "cma.jsonl")
    warm = cma.to_dict()["warm_start"]
    singles = {s["layer"]: s["values"][0] for s in warm["screen"]}
    # CMA-ES asks the screen's prior point first (its drop scores: best single drops highest)
    assert len(cma.trials) == 2 and cma.trials[0].number == 3
    assert cma.trials[0].point[:4] == pytest.approx(prior_point(cma_spec, warm["block_influence"], singles)[:4])
