"""A blade-carrying folder as a recipe source, and its model A opened under the folder's memory budget
(issue 15), on tiny random Llamas.

A recipe that takes layers from a built hybrid gets B's weights only: the check, the preview and the
build say so in their warnings, naming the op that would carry the blade on (read from the manifest,
A never opened); a damaged manifest is a warning, not a failed build. Opening the hybrid with
``device="auto"`` and a ``max_memory`` opens A within what B left of that budget, so part of A goes to
disk, with the same logits as the unbudgeted open.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.errors import GarageError
from tests.test_transfer_blade_recipe import PROMPTS, blade_built, write_recipe


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(root, A folder, B folder, part name, built folder) with the bin under root/home."""
    root = tmp_path_factory.mktemp("blade-sources")
    with blade_built(root) as (folder_a, folder_b, part, built):
        yield root, folder_a, folder_b, part, built.out_dir


def _carried(warnings) -> list[str]:
    return [w.message for w in warnings if "carries blade" in w.message or "damaged" in w.message]


def test_a_blade_carrying_source_is_named_in_check_and_build_warnings(made, capsys):
    from engine.build import build, validate_recipe
    from engine.loading import open_model
    from garage_tui.cli import main

    root, folder_a, folder_b, part, built = made
    recipe = write_recipe(root / "from-built.yaml", built, None)
    checked = validate_recipe(str(recipe), light=True)
    assert checked.ok
    [note] = _carried(checked.warnings)
    assert note == (f"source 'b' carries blade '{part}' (reads model A 'tiny-a'); the hybrid takes its weights only; "
                    f"add `- op: blade, part: {part}` under finish: to carry the blade")
    assert [w.path for w in checked.warnings if w.message == note] == ["sources.b"]
    # `garage build --json` carries the same line
    assert main(["build", str(recipe), "--out", str(root / "from-built"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [w["message"] for w in document["warnings"] if "carries blade" in w["message"]] == [note]
    assert not (root / "from-built" / "garage_attached.json").exists()  # the weights only, as the line says
    # a plain folder is not named; a recipe that carries the blade on is not told to
    assert _carried(build(str(write_recipe(root / "plain.yaml", folder_b, None)), root / "plain").report.warnings) == []
    carried_on = build(str(write_recipe(root / "carried-on.yaml", built, part)), root / "carried-on")
    assert _carried(carried_on.report.warnings) == []
    assert [item.kind for item in open_model(str(carried_on.out_dir)).standing] == ["standing-blade"]


def test_a_damaged_manifest_on_a_source_is_a_warning_and_the_blade_file_is_not_read_as_weights(made, tmp_path):
    from engine.build import build, validate_recipe
    from engine.loading import open_model
    from engine.run import run
    from engine.runner import encode

    root, folder_a, folder_b, part, built = made
    copy = tmp_path / "damaged"
    shutil.copytree(built, copy)
    (copy / "garage_attached.json").write_text("{not json")
    recipe = write_recipe(tmp_path / "damaged.yaml", copy, None)
    result = build(str(recipe), tmp_path / "out")
    [note] = _carried(result.report.warnings)
    assert "source 'b' has a damaged garage_attached.json" in note and "weights only" in note
    plain = build(str(write_recipe(tmp_path / "plain.yaml", folder_b, None)), tmp_path / "plain")
    assert result.tensors == plain.tensors  # blade-00.safetensors was left out, not read as weights
    b = open_model(str(folder_b))
    ids = encode(b, PROMPTS[0])
    assert torch.equal(run(open_model(str(result.out_dir)), ids).logits, run(b, ids).logits)
    assert _carried(validate_recipe(str(recipe), light=True).warnings) == [note]  # `garage recipe check` too
    # weights-only opens (preview, search trials, inspect) read it too; running it, or opening it whole, is refused
    detached = open_model(str(copy), attach=False)
    assert detached.detached == ["parts unknown (damaged garage_attached.json)"]
    with pytest.raises(GarageError, match="garage_attached.json"):
        run(detached, ids)
    with pytest.raises(GarageError, match="garage_attached.json"):
        open_model(str(copy))


def test_a_device_map_key_naming_one_tensor_is_counted_as_that_tensor():
    from engine.tensors import placed_tensors

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    model.register_buffer("scale", torch.ones(5))
    assert [t.shape for t in placed_tensors(model, "0")] == [(2, 3), (2,)]
    assert [t.shape for t in placed_tensors(model, "0.weight")] == [(2, 3)]
    assert [t.shape for t in placed_tensors(model, "scale")] == [(5,)]


def _bytes(model) -> int:
    """Parameters and buffers (rotary tables too: accelerate places them), each tensor once."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def test_model_a_opens_under_the_folders_memory_budget(made, tmp_path):
    from engine.loading import open_model
    from engine.run import run
    from engine.runner import encode
    from engine.transfer.blade_folder import _placed_bytes

    root, folder_a, folder_b, part, built = made
    whole = open_model(str(built))
    [free_standing] = whole.standing
    weights_a, weights_b = _bytes(free_standing.loaded_a.model), _bytes(whole.model)
    # B fits on the CPU with room for half of A: the rest of A must go to disk
    budget = {"cpu": weights_b + weights_a // 2}
    offload = tmp_path / "offload"
    split = open_model(str(built), device="auto", max_memory=budget, offload_folder=str(offload))
    [standing] = split.standing
    a = standing.loaded_a
    assert _placed_bytes([split.model]) == {"cpu": weights_b}  # B whole on the CPU (no map is kept then)
    assert set(a.model.hf_device_map.values()) == {"cpu", "disk"}  # unbudgeted, A would sit whole on the CPU
    on_disk = _placed_bytes([a.model])["disk"]
    assert 0 < on_disk < weights_a and _placed_bytes([split.model, a.model]) == \
        {"cpu": weights_b + weights_a - on_disk, "disk": on_disk}
    assert weights_b + weights_a - on_disk <= budget["cpu"]  # B and A together within the one budget
    assert (offload / "model-a-for-blade-00").is_dir()  # A's own offload files, apart from B's
    b = open_model(str(folder_b))
    for prompt in PROMPTS:
        ids = encode(whole, prompt)
        want = run(whole, ids).logits
        got = run(split, ids).logits
        assert float((got - want).abs().max() / want.abs().max()) <= 1e-5, prompt
        assert (got - run(b, ids).logits)[0, 1:].abs().max() > 1e-2, prompt  # and the blade acts
    assert standing.rows_read  # A ran, from disk, inside B's passes
