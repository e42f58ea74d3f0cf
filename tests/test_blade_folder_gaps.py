"""A folder that carries a blade (issue 15's gaps), on tiny random Llamas.

Weights-only callers open it without attaching (model A stays shut, the model refuses to run); A is
identified by its weight files' sha256, not only its config hash; widening keeps the blade, mapped
like the residual; the fit planner counts A.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.test_transfer_blade_recipe import PROMPTS, blade_built, tiny_folder, write_recipe


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(root, A folder, B folder, part name, built folder) with the bin under root/home."""
    root = tmp_path_factory.mktemp("blade-gaps")
    with blade_built(root) as (folder_a, folder_b, part, built):
        yield root, folder_a, folder_b, part, built.out_dir


@pytest.fixture()
def a_moved(made, tmp_path):
    """Model A moved away from its recorded source for the test, then put back."""
    folder_a = made[1]
    moved = tmp_path / "elsewhere"
    shutil.move(str(folder_a), moved)
    yield
    shutil.move(str(moved), folder_a)


def test_weights_only_callers_open_without_a_and_the_detached_model_refuses_to_run(made, a_moved, capsys):
    from engine.build.preview import preview
    from engine.errors import GarageError
    from engine.loading import open_model
    from engine.run import run
    from engine.runner import encode
    from engine.search.trial import _source
    from engine.transfer.pairs import TransferError
    from garage_tui.cli import main

    root, folder_a, folder_b, part, built = made
    with pytest.raises(TransferError, match="reads model A 'tiny-a'"):
        open_model(str(built))  # running it still needs A
    weights = open_model(str(built), attach=False)
    b = open_model(str(folder_b))
    assert weights.standing == [] and weights.detached == [f"blade {part}"]
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(weights.model.state_dict()[name], b.model.state_dict()[name])
    ids = encode(b, PROMPTS[0])
    with pytest.raises(GarageError, match=f"opened without the blade {part} its folder carries") as caught:
        run(weights, ids)
    assert "\n" not in str(caught.value)
    # the built folder as a recipe source: the preview needs only its weights, so A stays shut
    shown = preview(str(write_recipe(root / "from-built.yaml", built, None)))
    assert shown.standing == [] and (run(shown, ids).logits - run(b, ids).logits).abs().max() <= 1e-6
    assert _source(str(built)).detached == [f"blade {part}"]  # the search's sources, the same way
    # `garage inspect` and `garage extract --load` read weights only
    assert main(["inspect", str(built), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config_hash"] == b.config_hash
    assert main(["extract", str(built), "L1.mlp", "--load", "--name", "built-mlp", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "built-mlp"


def test_model_a_is_identified_by_its_weights_and_a_changed_a_is_refused(made):
    from engine.build.sources import file_digest
    from engine.loading import open_model
    from engine.parts import PartsBin
    from engine.transfer.blade_parts import BladeMismatchError, load_blade

    root, folder_a, folder_b, part, built = made
    weights_file = folder_a / "model.safetensors"
    recorded = PartsBin().get(part).config["model_a"]["weights"]
    assert list(recorded) == ["model.safetensors"] and recorded["model.safetensors"]["sha256"] == \
        file_digest(weights_file)
    manifest = json.loads((built / "garage_attached.json").read_text())
    assert manifest["attached"][0]["model_a"]["weights"] == recorded
    original = weights_file.read_bytes()
    try:
        tiny_folder(folder_a, seed=7)  # another A of the very same config: only the weights tell
        changed = open_model(str(folder_a), attach=False)
        with pytest.raises(BladeMismatchError, match=r"whose model.safetensors had sha256 \w{12}, but .* now has "
                                                     r"\w{12} \(A's weights changed since\)") as caught:
            open_model(str(built))
        assert "\n" not in str(caught.value) and "put back the A it was trained with" in str(caught.value)
        with pytest.raises(BladeMismatchError, match="A's weights changed since"):
            load_blade(PartsBin(), part, loaded_a=changed)  # the runtime blade checks the same
    finally:
        weights_file.write_bytes(original)  # the same bytes with a new mtime: re-hashed, and they match
    assert weights_file.stat().st_mtime_ns != recorded["model.safetensors"]["mtime_ns"]
    assert [item.kind for item in open_model(str(built)).standing] == ["standing-blade"]


def test_widening_a_blade_carrying_model_keeps_the_blade_mapped_like_the_residual(made):
    from engine.errors import GarageError
    from engine.loading import open_model
    from engine.run import run
    from engine.runner import encode
    from engine.transfer.widen import widened_loaded

    root, folder_a, folder_b, part, built = made
    hybrid, b = open_model(str(built)), open_model(str(folder_b))
    wide, known = widened_loaded(hybrid, 96, seed=3)
    assert wide.config.hidden_size == 96 and [item.kind for item in wide.standing] == ["standing-blade"]
    for prompt in PROMPTS:
        ids = encode(hybrid, prompt)
        narrow = run(hybrid, ids).logits[0]
        widened = run(wide, ids).logits[0]
        assert (widened - narrow).abs().max() <= 1e-4, prompt  # the same function, blade included
        assert (widened - run(b, ids).logits[0])[1:].abs().max() > 1e-2, prompt  # and the blade acts
    assert wide.standing[0].rows_read and wide.standing[0].out_maps == (known,)
    twice, _ = widened_loaded(wide, 128, seed=4)  # a second widening composes with the first
    ids = encode(hybrid, PROMPTS[1])
    assert (run(twice, ids).logits - run(hybrid, ids).logits).abs().max() <= 1e-4
    detached, _ = widened_loaded(open_model(str(built), attach=False), 96)
    with pytest.raises(GarageError, match="opened without the blade"):
        run(detached, ids)  # B alone stays unrunnable, widened or not


def test_the_fit_plan_counts_model_a_without_reading_weights(made, monkeypatch):
    import engine.loading
    from engine.fit_plan import plan_fit, plan_for_loaded
    from engine.loading import open_model

    root, folder_a, folder_b, part, built = made
    hybrid, weights_only = open_model(str(built)), open_model(str(built), attach=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the plan read weights")

    monkeypatch.setattr(engine.loading, "_load_weights", refuse)
    with_blade, plan_b, plan_a = plan_fit(str(built)), plan_fit(str(folder_b)), plan_fit(str(folder_a))
    [attached] = with_blade.attached
    assert attached.part == f"blade {part}" and attached.model == "tiny-a"
    assert attached.weight_bytes == plan_a.weight_bytes > 0
    resident_a = plan_a.weight_bytes + plan_a.runtime_allowance_bytes + plan_a.tokenizer_bytes
    assert attached.resident_bytes == resident_a
    # A opens once B is in: B's resident bytes plus A's load peak (the same tokenizer, so the same transient)
    assert with_blade.load_peak_bytes - plan_b.load_peak_bytes == resident_a
    assert with_blade.forward_peak_bytes >= plan_b.forward_peak_bytes + resident_a + attached.pass_bytes
    assert attached.pass_bytes > 0 and with_blade.weight_bytes == plan_b.weight_bytes
    assert any("model A 'tiny-a'" in note for note in with_blade.notes)
    # the bay's card of the open hybrid counts the A it holds
    assert [item.weight_bytes for item in plan_for_loaded(hybrid).attached] == [plan_a.weight_bytes]
    assert plan_for_loaded(weights_only).attached == []  # B's weights read alone hold no A


def test_the_fit_plan_names_a_missing_model_a(made, a_moved):
    from engine.fit_plan import plan_fit

    built = made[4]
    plan = plan_fit(str(built))
    assert plan.attached == [] and any("model A 'tiny-a' cannot be found" in note for note in plan.notes)


# --- review follow-ups ---------------------------------------------------------------------


def test_the_fit_plan_counts_model_a_through_the_folders_single_weight_file(made):
    from engine.fit_plan import plan_fit

    root, folder_a, folder_b, part, built = made
    weights_file = built / "model.safetensors"
    assert weights_file.is_file()  # open_model(this file) attaches the folder's blade, so the plan must count A
    through_file, plan_a = plan_fit(str(weights_file)), plan_fit(str(folder_a))
    assert [(item.part, item.weight_bytes) for item in through_file.attached] == \
        [(f"blade {part}", plan_a.weight_bytes)]
    assert through_file.load_peak_bytes == plan_fit(str(built)).load_peak_bytes


def test_the_per_device_shares_hold_model_a_on_the_same_device(made):
    from engine.fit_plan import plan_fit
    from garage_tui.render_plan import plan_lines, plan_table

    root, folder_a, folder_b, part, built = made
    plan_a, plan_b = plan_fit(str(folder_a), device="cuda"), plan_fit(str(folder_b), device="cuda")
    with_blade = plan_fit(str(built), device="cuda")
    # the GPU line is B and A together: B alone would say it fits where both do not
    assert {share.device: share.weight_bytes for share in with_blade.devices} == \
        {"0": plan_b.weight_bytes + plan_a.weight_bytes}
    assert [share.device for share in with_blade.attached[0].devices] == ["0"]
    assert any("model A 'tiny-a'" in line for line in plan_lines(with_blade))
    assert plan_table(with_blade).row_count == plan_table(plan_b).row_count + 1
    # --device auto, as the CUDA planning tests run it: B's budgeted placement plus A's own
    budget = {"cpu": plan_b.weight_bytes // 2}
    auto_b = plan_fit(str(folder_b), device="auto", max_memory=budget)
    auto = plan_fit(str(built), device="auto", max_memory=budget)
    shares = {share.device: share.weight_bytes for share in auto.devices}
    assert sum(shares.values()) == auto_b.weight_bytes + plan_a.weight_bytes
    # A opens in what B leaves of the budget (as the loader opens it), so together they stay within it
    a_shares = {share.device: share.weight_bytes for share in auto.attached[0].devices}
    assert shares["cpu"] <= budget["cpu"] and a_shares.get("disk", 0) > 0
    assert shares["disk"] == {s.device: s.weight_bytes for s in auto_b.devices}["disk"] + a_shares["disk"]
    assert any("within what B leaves of --max-memory" in note for note in auto.notes)
    # the peaks still count B's host share once and A's resident bytes once
    assert auto.load_peak_bytes - auto_b.load_peak_bytes == auto.attached[0].resident_bytes


def test_model_as_digest_is_kept_across_processes_and_a_damaged_record_is_ignored(made, monkeypatch, tmp_path):
    import os

    import engine.build.sources as sources
    from engine.loading import open_model
    from engine.transfer.blade_parts import DIGESTS_FILE, check_blade_weights

    root, folder_a, folder_b, part, built = made
    monkeypatch.setenv("GARAGE_CACHE", str(tmp_path / "cache"))
    made_for = json.loads((built / "garage_attached.json").read_text())["attached"][0]["model_a"]
    weights_file = folder_a / "model.safetensors"
    stat = weights_file.stat()
    os.utime(weights_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # copied or restored: same bytes
    loaded_a = open_model(str(folder_a), attach=False)
    hashed: list[str] = []
    original = sources.file_digest

    def counting(path):
        hashed.append(str(path))
        return original(path)

    monkeypatch.setattr(sources, "file_digest", counting)

    def fresh_process_check() -> None:
        monkeypatch.setattr(sources, "_DIGESTS", {})  # a new process remembers nothing in memory
        check_blade_weights(part, made_for, loaded_a, "retrain")

    fresh_process_check()
    assert len(hashed) == 1  # the mtime moved: read once
    record = tmp_path / "cache" / DIGESTS_FILE
    assert json.loads(record.read_text())["files"][str(weights_file.resolve())]["sha256"] == \
        made_for["weights"]["model.safetensors"]["sha256"]
    fresh_process_check()
    assert len(hashed) == 1  # the next process stats the file and reads the record, not the weights
    record.write_text("{not json")
    fresh_process_check()
    assert len(hashed) == 2 and json.loads(record.read_text())["files"]  # ignored, re-hashed, rewritten


def test_a_widened_blade_maps_its_output_with_one_float32_matrix_on_its_device(made, monkeypatch):
    from engine.loading import open_model
    from engine.run import run
    from engine.runner import encode
    from engine.transfer.widen import KnownMap, widened_loaded

    root, folder_a, folder_b, part, built = made
    hybrid = open_model(str(built))
    wide, known = widened_loaded(hybrid, 96, seed=3)
    twice, known_2 = widened_loaded(wide, 128, seed=4)
    matrix = twice.standing[0].out_matrix
    assert matrix is not None and matrix.dtype == torch.float32 and tuple(matrix.shape) == (64, 128)
    expected = (known.matrix() @ known_2.matrix()).float()
    assert (matrix - expected).abs().max() <= 1e-6

    def rebuilt(*args, **kwargs):
        raise AssertionError("a pass rebuilt the widening's map")

    monkeypatch.setattr(KnownMap, "matrix", rebuilt)
    monkeypatch.setattr(KnownMap, "apply", rebuilt)
    ids = encode(hybrid, PROMPTS[0])
    assert (run(twice, ids).logits - run(hybrid, ids).logits).abs().max() <= 1e-4


def test_a_damaged_weights_record_and_control_characters_give_a_clean_line(made, tmp_path):
    from engine.loading import open_model
    from engine.transfer.blade_parts import BladeMismatchError

    root, folder_a, folder_b, part, built = made
    copy = tmp_path / "damaged"
    shutil.copytree(built, copy)
    manifest = json.loads((copy / "garage_attached.json").read_text())
    manifest["attached"][0]["model_a"]["weights"] = {"model.safetensors": "not a record"}
    manifest["attached"][0]["part"] = "evil\n\x1b[31mred\u202e"
    (copy / "garage_attached.json").write_text(json.dumps(manifest))
    with pytest.raises(BladeMismatchError, match="damaged record of model A 'tiny-a'") as caught:
        open_model(str(copy))
    message = str(caught.value)
    assert "had sha256" not in message and "evil?" in message
    assert not any(char in message for char in "\n\x1b\u202e")


def test_the_fit_plan_notes_a_damaged_manifest_instead_of_failing(made, tmp_path):
    from engine.fit_plan import plan_fit

    root, folder_a, folder_b, part, built = made
    copy = tmp_path / "unreadable"
    shutil.copytree(built, copy)
    (copy / "garage_attached.json").write_text("{not json")
    plan = plan_fit(str(copy))
    assert plan.attached == [] and plan.weight_bytes == plan_fit(str(folder_b)).weight_bytes
    assert any("garage_attached.json cannot be read" in note for note in plan.notes)


def test_inspect_says_the_folder_carries_parts_not_attached(made, capsys):
    from garage_tui.cli import main

    root, folder_a, folder_b, part, built = made
    assert main(["inspect", str(built), "--json", "--depth", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["not_attached"] == [f"blade {part}"]
    assert main(["inspect", str(built), "--depth", "0"]) == 0
    assert f"carries blade {part}, not attached here" in " ".join(capsys.readouterr().out.split())
    assert main(["inspect", str(folder_b), "--json", "--depth", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["not_attached"] == []
