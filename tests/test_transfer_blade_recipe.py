"""A blade baked into a hybrid by a recipe (``finish: [{op: blade, part: NAME}]``), on tiny random Llamas.

A and B are two random Llamas with one character tokenizer, saved as folders; a blade from A's L2
into B's L1 is trained a few steps and saved to the bin. A recipe that rebuilds B and ends with the
blade op builds a folder that holds B's weights plus the part file; opening it in the garage opens A
from its recorded source and attaches the blade, so every pass gives the runtime blade's logits.
Plain transformers on the folder gives B alone. The checks refuse a blade whose B has another config,
a missing part, a part that is not a blade, and a folder whose A cannot be found.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch

PROMPTS = ["the cat sat", "a blade reads A", "zebra"]


def char_tokenizer(two: bool = False):
    """One token per printable character (a space joined to the next), or per two characters (``two``):
    real fast tokenizers with offsets, made here without a download."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "<s>", "</s>"]
    chars = [chr(c) for c in range(32, 127)]
    tokens = chars + [" " + c for c in chars]
    if two:
        letters = [chr(c) for c in range(97, 123)] + [" "]
        tokens += [x + y for x in letters for y in letters if x + y not in tokens]
    vocab = {token: index for index, token in enumerate(specials + tokens)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[a-z ][a-z]|." if two else " ?."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")


def tiny_folder(folder: Path, seed: int, layers: int = 4, two: bool = False) -> Path:
    import transformers

    tokenizer = char_tokenizer(two)
    config = transformers.LlamaConfig(num_hidden_layers=layers, hidden_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=96, vocab_size=len(tokenizer),
                                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_part(folder_a: Path, folder_b: Path, name: str) -> str:
    """A blade from A's L2 into B's L1, trained a few steps on letter prompts answered by A, saved to the bin."""
    from engine.loading import open_model
    from engine.parts import PartsBin
    from engine.transfer.blade_data import BladeTask, TaskExample
    from engine.transfer.blade_parts import save_blade
    from engine.transfer.blade_train import TrainSettings, train_blade_at

    a, b = open_model(str(folder_a)), open_model(str(folder_b))
    generator = torch.Generator().manual_seed(1)
    prompts = ["".join(chr(97 + int(c)) for c in torch.randint(0, 26, (6,), generator=generator)) for _ in range(24)]
    task = BladeTask("letters", [TaskExample(p, chr(97 + i % 26)) for i, p in enumerate(prompts)], "tiny")
    report = train_blade_at(a, b, "L2", "L1", task, TrainSettings(steps=15, batch_size=8, lr=5e-2))
    assert float(report.blade.gate.detach().abs().max()) > 0  # the gate opened: the blade changes B
    return save_blade(PartsBin(), a, b, report, name=name).name


def write_recipe(path: Path, source: Path, part: str | None, layers: int = 4, extra: str = "") -> Path:
    finish = f"finish:\n  - {{op: blade, part: {part}}}\n" if part else ""
    path.write_text(f"""recipe_version: 1
name: {path.stem}
sources:
  b: {source}
embed: b
final_norm: b
lm_head: b
layers:
  - take: b.L0-{layers - 1}
{extra}{finish}""")
    return path


@contextlib.contextmanager
def blade_built(root: Path):
    """(A folder, B folder, part name, build report) of a blade baked into B; the bin lives under root/home."""
    patch = pytest.MonkeyPatch()
    patch.setenv("GARAGE_HOME", str(root / "home"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster on a shared machine
    try:
        folder_a, folder_b = tiny_folder(root / "tiny-a", 0), tiny_folder(root / "tiny-b", 1)
        part = train_part(folder_a, folder_b, "a-into-b")
        from engine.build import build

        yield folder_a, folder_b, part, build(str(write_recipe(root / "with-blade.yaml", folder_b, part)),
                                              root / "built")
    finally:
        torch.set_num_threads(threads)
        patch.undo()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(root, A folder, B folder, part name, build report)."""
    root = tmp_path_factory.mktemp("blade-recipe")
    with blade_built(root) as (folder_a, folder_b, part, built):
        yield root, folder_a, folder_b, part, built


def _runtime_logits(folder_a: Path, b, part: str, prompt: str) -> torch.Tensor:
    from engine.loading import open_model
    from engine.parts import PartsBin
    from engine.run import run
    from engine.transfer.blade_parts import attach_blade, load_blade

    a = open_model(str(folder_a))
    found = load_blade(PartsBin(), part, loaded_a=a, loaded_b=b)
    attached = attach_blade(found, a, b, [prompt])
    return run(b, attached.ids, interventions=[attached.intervention]).logits[0]


def test_the_built_folder_opens_with_the_blade_and_gives_the_runtime_blades_logits(made):
    from engine.loading import open_model
    from engine.run import run
    from engine.runner import encode, predict

    root, folder_a, folder_b, part, built = made
    hybrid, b = open_model(str(built.out_dir)), open_model(str(folder_b))
    assert [item.kind for item in hybrid.standing] == ["standing-blade"] and not b.standing
    assert hybrid.config_hash == b.config_hash
    for prompt in PROMPTS:
        ids = encode(hybrid, prompt)
        carried = run(hybrid, ids).logits[0]
        runtime = _runtime_logits(folder_a, b, part, prompt)
        alone = run(b, ids).logits[0]
        assert (carried - runtime).abs().max() <= 1e-5, prompt
        assert (carried - alone)[1:].abs().max() > 1e-2, prompt  # the blade really acts (not on position 0)
        assert torch.equal(carried[0], alone[0])  # the first position is left out, as in training
    # `garage run`'s path: the same last-position logits
    result = predict(hybrid, PROMPTS[0])
    assert torch.allclose(result.logits, _runtime_logits(folder_a, b, part, PROMPTS[0])[-1], atol=1e-5)
    # a padded batch: each row gets what it gets alone
    tokens = [encode(hybrid, prompt)[0] for prompt in PROMPTS]
    width = max(len(t) for t in tokens)
    ids = torch.zeros(len(tokens), width, dtype=torch.long)
    mask = torch.zeros(len(tokens), width, dtype=torch.long)
    for row, t in enumerate(tokens):
        ids[row, :len(t)], mask[row, :len(t)] = t, 1
    batched = run(hybrid, ids, attention_mask=mask).logits
    for row, t in enumerate(tokens):
        single = run(hybrid, t[None]).logits[0]
        assert (batched[row, :len(t)] - single).abs().max() <= 1e-5


def test_plain_transformers_loads_the_folder_as_b_without_the_blade(made):
    import transformers

    root, folder_a, folder_b, part, built = made
    out = built.out_dir
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        plain = transformers.AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=ids).logits
        source = transformers.AutoModelForCausalLM.from_pretrained(folder_b).eval()(input_ids=ids).logits
    assert torch.equal(plain, source)
    # the part file is the bin's file, byte for byte, and the provenance names it with its digest
    from engine.parts import PartsBin

    record = PartsBin().get(part)
    assert (out / "blade-00.safetensors").read_bytes() == Path(record.path).read_bytes()
    provenance = json.loads((out / "provenance.json").read_text())
    step = provenance["finish"][0]
    assert step["op"] == "blade" and step["part"] == part and step["part_sha256"] == record.sha256
    assert step["file"] == "blade-00.safetensors" and len(step["file_sha256"]) == 64
    assert step["model_a"]["source"] == str(folder_a) and step["address_b"] == "L1.out"
    manifest = json.loads((out / "garage_attached.json").read_text())
    assert manifest["attached"][0]["model_a"]["config_hash"] == record.config["model_a"]["config_hash"]


def test_the_carried_blade_file_is_not_read_as_weights_and_bad_settings_allocate_nothing(made):
    from engine.errors import GarageError
    from engine.parts.extract import CheckpointIndex
    from engine.transfer.blade import Blade

    root, folder_a, folder_b, part, built = made
    out = built.out_dir
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["blade-00.safetensors", "model.safetensors"]
    # a single-file hybrid has no index: the blade's tensors (weight, gate, ...) must not join the model's
    where = CheckpointIndex(out).where
    assert where and {path.name for path in where.values()} == {"model.safetensors"}
    manifest = json.loads((out / "garage_attached.json").read_text())
    settings = manifest["attached"][0]["blade"]
    from engine.parts import PartsBin

    tensors = PartsBin().load_tensors(part)
    for bad in ({**settings, "width_b": 10**6}, {k: v for k, v in settings.items() if k != "width_a"}):
        with pytest.raises(GarageError) as caught:
            Blade.from_tensors(bad, tensors)
        assert "\n" not in str(caught.value)


def test_a_missing_model_a_is_refused_in_one_line(made, tmp_path):
    from engine.loading import open_model
    from engine.transfer.pairs import TransferError

    root, folder_a, folder_b, part, built = made
    moved = tmp_path / "elsewhere"
    shutil.move(str(folder_a), moved)
    try:
        with pytest.raises(TransferError, match="reads model A 'tiny-a' from .*cannot be opened") as caught:
            open_model(str(built.out_dir))
        assert "\n" not in str(caught.value) and "garage_attached.json" in str(caught.value)
    finally:
        shutil.move(str(moved), folder_a)


def test_a_blade_for_another_config_a_missing_part_and_a_non_blade_are_refused(made):
    from engine.build import validate_recipe

    root, folder_a, folder_b, part, built = made
    # three of B's four layers: another config, so not the blade's B
    fewer = validate_recipe(str(write_recipe(root / "fewer.yaml", folder_b, part, layers=3)), light=True)
    assert len(fewer.problems) == 1 and fewer.problems[0].path == "finish[0].part"
    assert "was trained for 'tiny-b' (config" in fewer.problems[0].message and "this model has config" in \
        fewer.problems[0].message
    # the same layers with one config value changed keep the width and the layers: only the hash tells
    other = validate_recipe(str(write_recipe(root / "theta.yaml", folder_b, part,
                                             extra="config: {rms_norm_eps: 1.0e-3}\n")))
    assert [p.path for p in other.problems] == ["finish[0].part"], [str(p) for p in other.problems]
    missing = validate_recipe(str(write_recipe(root / "missing.yaml", folder_b, "no-such-blade")), light=True)
    assert "no part named 'no-such-blade'" in missing.problems[0].message
    from engine.loading import open_model
    from engine.parts import PartsBin

    layer = PartsBin().add_from_model(open_model(str(folder_b)), "L1.mlp", name="b-mlp")
    not_blade = validate_recipe(str(write_recipe(root / "mlp.yaml", folder_b, layer.name)), light=True)
    assert [p.path for p in not_blade.problems] == ["finish[0].part"]
    assert "part 'b-mlp' is a " in not_blade.problems[0].message and "not a blade" in not_blade.problems[0].message
    ok = validate_recipe(str(write_recipe(root / "ok.yaml", folder_b, part)), light=True)
    assert not ok.problems and ok.recipe.finish[0].params == {"part": part}


def test_recipe_check_and_the_preview_agree_with_the_build(made, capsys):
    from engine.build.preview import preview
    from engine.loading import open_model
    from engine.run import run
    from engine.runner import encode
    from garage_tui.cli import main

    root, folder_a, folder_b, part, built = made
    recipe = root / "with-blade.yaml"
    assert main(["recipe", "check", str(recipe), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["recipe", "check", str(write_recipe(root / "fewer.yaml", folder_b, part, layers=3))]) != 0
    assert "finish[0].part" in capsys.readouterr().out
    shown = preview(str(recipe))
    hybrid = open_model(str(built.out_dir))
    ids = encode(hybrid, PROMPTS[1])
    assert [item.kind for item in shown.standing] == ["standing-blade"]
    assert (run(shown, ids).logits - run(hybrid, ids).logits).abs().max() <= 1e-5
    # `garage run BUILT --prompt ...`: the blade-on guesses, and the blade named as carried by the folder
    assert main(["run", str(built.out_dir), "--prompt", PROMPTS[1], "--top-k", "3", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    logits = run(hybrid, ids).logits[0, -1]
    assert [row["token_id"] for row in document["top"]] == logits.topk(3).indices.tolist()
    assert abs(document["top"][0]["logit"] - float(logits.max())) <= 1e-5
    assert document["carried"][0]["part"] == part and document["carried"][0]["model_a"] == "tiny-a"


def test_generation_reruns_the_sequence_and_refuses_a_cache(made):
    from engine.decode import greedy_decode
    from engine.errors import GarageError
    from engine.loading import open_model
    from engine.runner import encode

    root, folder_a, folder_b, part, built = made
    hybrid = open_model(str(built.out_dir))
    ids = encode(hybrid, PROMPTS[0])
    decoded = greedy_decode(hybrid, ids, 3, stop_at_eos=False)
    assert decoded.mode == "rerun" and len(decoded.new_tokens) == 3
    with pytest.raises(GarageError, match="reads the whole text"):
        greedy_decode(hybrid, ids, 3, stop_at_eos=False, mode="kv-cache")


def test_a_weight_changing_op_after_the_blade_is_refused(made):
    from engine.build import validate_recipe

    root, folder_a, folder_b, part, built = made
    path = write_recipe(root / "late.yaml", folder_b, part)
    path.write_text(path.read_text() + "  - {op: bake, kind: head-scale, head: L1.H0, factor: 0.5}\n")
    report = validate_recipe(str(path), light=True)
    assert [p.path for p in report.problems] == ["finish[1].op"]
    assert "changes the weights after 'blade'" in report.problems[0].message


def test_a_blade_between_different_tokenizers_reads_the_pass_back_as_text(made, tmp_path):
    """A reads two characters a token, B one: the folder's blade pairs them by shared token ends, as at run time."""
    from engine.build import build
    from engine.loading import open_model
    from engine.run import run
    from engine.runner import encode

    root, folder_a, folder_b, part, built = made
    folder_pairs = tiny_folder(tmp_path / "tiny-pairs", 2, two=True)
    offsets_part = train_part(folder_pairs, folder_b, "pairs-into-b")
    from engine.parts import PartsBin

    assert PartsBin().get(offsets_part).config["alignment"] == "shared-token-end-offsets"
    out = build(str(write_recipe(tmp_path / "pairs.yaml", folder_b, offsets_part)), tmp_path / "built").out_dir
    hybrid, b = open_model(str(out)), open_model(str(folder_b))
    for prompt in PROMPTS:
        ids = encode(hybrid, prompt)
        carried = run(hybrid, ids).logits[0]
        assert (carried - _runtime_logits(folder_pairs, b, offsets_part, prompt)).abs().max() <= 1e-5, prompt
        assert (carried - run(b, ids).logits[0]).abs().max() > 1e-2
    assert hybrid.standing[0].rows_read[-1] < len(encode(hybrid, PROMPTS[-1])[0]) - 1  # only shared token ends
