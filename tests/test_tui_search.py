"""The build bench's search view on a tiny random Llama (a character tokenizer, saved to tmp_path):
start from the bench's recipe, watch trials arrive, Esc stops, the session keeps the journal,
R resumes it to the uninterrupted run's result, Enter puts a trial's recipe on the bench."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from test_tui_support import make_app, run, wait_for, wait_idle

from garage_tui.screens.search import SearchKnobs, parse_knobs, spec_document, trial_changes

LAYERS = 6


def char_tokenizer():
    """One token per printable ASCII character, a space joined to the next one (so " good" and " bad" start
    differently), with offsets: a real fast tokenizer, made here without a download."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "<s>", "</s>"]
    chars = [chr(c) for c in range(32, 127)]
    vocab = {token: index for index, token in enumerate(specials + chars + [" " + c for c in chars] + ["\n"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(" ?."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")


def tiny_llama_folder(folder: Path, layers: int = LAYERS, width: int = 64, seed: int = 0) -> Path:
    """A random Llama with the character tokenizer, saved as a plain HF folder (opens in well under a second)."""
    import torch
    import transformers

    tokenizer = char_tokenizer()
    config = transformers.LlamaConfig(num_hidden_layers=layers, hidden_size=width, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=96, vocab_size=len(tokenizer),
                                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def tiny(tmp_path):
    from engine.loading import open_model

    return open_model(str(tiny_llama_folder(tmp_path / "tiny-llama")))


def test_knob_line_is_checked_and_becomes_a_spec():
    recipe = {"recipe_version": 1, "name": "r", "sources": {"a": "x"}, "layers": [{"take": "a.L0-5"}]}
    knobs = parse_knobs("drop 2 budget 7 objectives perplexity,bits_per_byte", 6)
    assert knobs == SearchKnobs(drop=2, budget=7, objectives=["perplexity", "bits_per_byte"])
    spec = spec_document(recipe, knobs)
    assert spec["parameters"] == [{"drop": [0, 5], "count": 2}] and spec["optimiser"] == "nsga2"
    from engine.errors import GarageError

    for line, words in [("drop 6", "drop"), ("budget 10000000", "limit"), ("colour red", "unknown"),
                        ("drop", "key/value"), ("objectives accuracy", "objectives"), ("seed x", "whole")]:
        with pytest.raises(GarageError, match=words):
            parse_knobs(line, 6)
    base = [{"take": f"a.L{i}"} for i in range(4)]
    assert trial_changes(base, [base[0], base[2]]) == "−L1 −L3"


def _answer(app, pilot, line: str):
    from textual.widgets import Input

    from garage_tui.screens.ask import AskScreen

    async def go():
        await wait_for(pilot, lambda: isinstance(app.screen, AskScreen), 10, "the question")
        app.screen.query_one(Input).value = line
        await pilot.press("enter")
        await pilot.pause()

    return go()


@pytest.mark.slow  # a Pilot walk with real workers (tens of seconds): not for the quick lane
def test_search_view_start_stop_resume_open(tiny, garage_home, tmp_path, monkeypatch):
    import engine.search.run as search_run
    from engine.search import load_search_spec, run_search
    from engine.sessions import load_session, save_session
    from garage_tui.screens.search import SearchScreen
    from garage_tui.widgets.bench_pane import BenchPane

    gate = threading.Event()
    real = search_run.evaluate_trial

    def held(task):  # trials from #2 on wait, so Esc lands mid-search on any machine
        if task.number >= 2:
            gate.wait(30)
        return real(task)

    monkeypatch.setattr(search_run, "evaluate_trial", held)

    async def scenario():
        app = make_app(tiny, home=tmp_path / "bin", model=tiny.name)
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_idle(pilot, 180)
            await pilot.press("4", "n", "S")
            screen = app.screen
            assert isinstance(screen, SearchScreen) and screen.recipe["layers"] == [{"take": "src.L0-5"}]
            await pilot.press("s")
            await _answer(app, pilot, "drop 2 budget 6 seed 1 tokens 64")
            await wait_for(pilot, lambda: len(screen.trials) >= 2, 180, "two trials")
            assert screen.query_one("#search-trials").row_count >= 2
            await pilot.press("escape")
            gate.set()
            await wait_for(pilot, lambda: not screen.running, 180, "the stopped search")
            stopped = screen.report
            assert stopped is not None and stopped.stopped and 2 <= len(stopped.trials) < 6
            assert stopped.best_recipe is None  # a stopped search writes no best recipe yet
            saved = dict(app.workbench.search)
            journal = Path(saved["journal"])
            assert journal.parent == garage_home / "searches"
            assert len(journal.read_text().splitlines()) == 1 + len(stopped.trials)
            # the session keeps the journal; a restored session brings it back
            path = save_session(tmp_path / "s.json", app.current_session())
            app.workbench.search = None
            app.workbench.apply_session(load_session(path))
            assert app.workbench.search == saved
            await pilot.press("q", "S")
            screen = app.screen
            assert "R resumes" in str(screen.query_one("#search-status").render())
            await pilot.press("R")
            await wait_for(pilot, lambda: screen.report is not None and not screen.running, 180, "the resumed search")
            resumed = screen.report
            assert not resumed.stopped and len(resumed.trials) == 6
            assert resumed.evaluated == 6 - len(stopped.trials)
            assert [t.values for t in resumed.trials[:len(stopped.trials)]] == [t.values for t in stopped.trials]
            assert len(screen.best_so_far()) == 6 and screen.best_so_far()[-1] == resumed.best.values[0]
            # the same search uninterrupted, on a fresh journal: the same trials and the same best
            whole = run_search(load_search_spec(Path(saved["spec"])), tmp_path / "whole.jsonl")
            assert [t.values for t in whole.trials] == [t.values for t in resumed.trials]
            assert Path(resumed.best_recipe).is_file()
            # Enter on the fourth trial puts its recipe on the bench
            chosen = resumed.trials[3]
            await pilot.press("g", "j", "j", "j", "enter")
            await wait_for(pilot, lambda: not isinstance(app.screen, SearchScreen), 10, "the bench")
            await pilot.pause()
            bench = app.query_one(BenchPane)
            assert app.pane == "bench" and bench.recipe == chosen.recipe
            assert len(bench.recipe["layers"]) == chosen.layers == LAYERS - 2

    run(scenario())


@pytest.mark.slow  # a Pilot walk with real workers (tens of seconds): not for the quick lane
def test_two_objectives_draw_the_pareto_front(tiny, garage_home, tmp_path):
    from engine.search import pareto_front
    from garage_tui.screens.search import SearchScreen

    async def scenario():
        app = make_app(tiny, home=tmp_path / "bin", model=tiny.name)
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_idle(pilot, 180)
            await pilot.press("4", "n", "S")
            screen = app.screen
            assert isinstance(screen, SearchScreen)
            await pilot.press("s")
            await _answer(app, pilot, "drop 1 budget 4 tokens 48 objectives perplexity,bits_per_byte")
            await wait_for(pilot, lambda: screen.report is not None and not screen.running, 180, "the search")
            assert screen.query_one("#search-pareto").display
            assert screen.front and screen.front == pareto_front(screen.report.trials)
            assert screen.objectives == ["perplexity", "bits_per_byte"]

    run(scenario())


def test_session_keeps_the_search_paths_and_refuses_a_malformed_entry(tmp_path):
    from engine.sessions import Session, SessionError, load_session, parse_session, save_session

    search = {"spec": str(tmp_path / "a.spec.json"), "journal": str(tmp_path / "a.jsonl")}
    path = save_session(tmp_path / "s.json", Session(prompt="p", search=search))
    assert load_session(path).search == search
    assert load_session(save_session(tmp_path / "t.json", Session(prompt="p"))).search is None
    for bad in ({"spec": 1, "journal": "j"}, {"journal": "j"}, "a.jsonl"):
        document = {**Session(prompt="p").to_dict(), "search": bad}
        with pytest.raises(SessionError, match="'search'"):
            parse_session(document)
