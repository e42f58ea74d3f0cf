"""Blades on tiny random Llamas: B is A with layer 1 zero-ablated, and a blade carries A's signal back.

The task is A's own answers: random letter prompts, each answered by A's top next token (A's
head is sharpened ×8 so the answers are confident). B, missing a layer, disagrees with A on
most; a blade from A's last residual into B must carry A's answer across — and a blade that
adds vectors of the same norms in random directions must not.
"""

from __future__ import annotations

import copy
import dataclasses
import threading

import pytest
import torch
import transformers as T

from engine.errors import Cancelled, InterventionError
from engine.transfer.blade import Blade, blade_from_stitch, inject
from engine.transfer.blade_data import BladeTask, TaskExample, encode_task, load_blade_task
from engine.transfer.blade_train import TrainSettings, sweep_depths, train_blade
from engine.transfer.pairs import TransferError
from tests.tiny_models import CharTokenizer

EXAMPLES = 300


def _tiny(layers: int = 4, name: str = "tiny-a"):
    from engine.anatomy import build_anatomy
    from engine.loading import LoadedModel, _model_class

    config = T.LlamaConfig(num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=96, vocab_size=128)
    torch.manual_seed(0)
    model = _model_class(config).from_config(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # confident answers: B's mistakes then cost real loss
    return LoadedModel(name=name, source="memory", source_kind="memory", model=model, config=model.config,
                       tokenizer=CharTokenizer(), anatomy=build_anatomy(model, model.config), device="cpu",
                       dtype="float32", structure_only=False)


@pytest.fixture(scope="module")
def pair():
    """(A, B, task): B is a copy of A with layer 1's attention and MLP outputs zeroed."""
    from engine.anatomy import build_anatomy
    from engine.run import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is ~10× faster on a loaded machine
    a = _tiny()
    model_b = copy.deepcopy(a.model)
    with torch.no_grad():
        model_b.model.layers[1].self_attn.o_proj.weight.zero_()
        model_b.model.layers[1].mlp.down_proj.weight.zero_()
    b = dataclasses.replace(a, name="tiny-b", model=model_b, anatomy=build_anatomy(model_b, model_b.config))
    generator = torch.Generator().manual_seed(1)
    prompts = ["".join(chr(97 + int(c)) for c in torch.randint(0, 26, (8,), generator=generator))
               for _ in range(EXAMPLES)]
    ids = torch.cat([a.tokenizer(prompt).input_ids for prompt in prompts])
    answers = run(a, ids, last_logits_only=True).logits[:, -1].argmax(-1).tolist()
    task = BladeTask("a-answers", [TaskExample(p, chr(int(i) - 3)) for p, i in zip(prompts, answers, strict=True)],
                     "tiny")
    yield a, b, task
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sweep(pair):
    a, b, task = pair
    heard: list[tuple[int, int, float]] = []
    result = sweep_depths(a, b, "L3", [1, 3], task, TrainSettings(steps=200, batch_size=32, lr=1e-2),
                          on_step=lambda layer, step, loss: heard.append((layer, step, loss)))
    result.heard = heard  # type: ignore[attr-defined]  # what a view drawing the loss curve would have seen
    return result


def test_blade_beats_blade_off_and_the_random_blade_on_held_out_examples(sweep):
    assert [r.layer_b for r in sweep.reports] == [1, 3] and [r.depth for r in sweep.reports] == [0.25, 0.75]
    for report in sweep.reports:
        held = report.held_out
        assert held.blade.examples == EXAMPLES // 4 and report.alignment == "same-token-positions"
        # B without layer 1 loses ~3.2 nats on A's answers; the blade takes back a good share
        assert held.off.loss > 3.0
        assert held.blade.loss < held.off.loss - 0.5, report.to_dict()["held_out"]
        assert held.blade.loss < held.random.loss - 1.0 and held.helps
        assert held.blade.accuracy > held.off.accuracy + 0.05
        # the random control adds as much per position (same norms), so the blade's help is its direction
        assert held.random.loss > held.off.loss
        losses = report.log.losses
        assert len(losses) == 200 and sum(losses[-10:]) < sum(losses[:10]) - 10 * 0.5
        assert [loss for layer, _, loss in sweep.heard if layer == report.layer_b] == losses
    document = sweep.to_dict()
    assert document["best_layer"] in (1, 3) and len(document["depths"]) == 2
    assert document["depths"][0]["held_out"]["off"]["examples"] == EXAMPLES // 4


def test_untrained_blade_is_exactly_blade_off_and_it_composes_with_other_interventions(pair, sweep):
    from engine.interventions import scale
    from engine.run import run

    a, b, task = pair
    data = encode_task(a, b, "L3.out", task.examples[:4])
    shut = Blade(64, 64)  # gate starts at zero
    rows = (data.donor.rows, data.donor.batch_index, data.donor.position_index)
    clean = run(b, data.ids, attention_mask=data.mask).logits
    assert torch.equal(run(b, data.ids, attention_mask=data.mask, interventions=[inject(shut, "L1", *rows)]).logits,
                       clean)
    trained = sweep.reports[0].blade
    alone = run(b, data.ids, attention_mask=data.mask, interventions=[inject(trained, "L1", *rows)]).logits
    both = [scale("L2", 0.5), inject(trained, "L1", *rows)]
    composed = run(b, data.ids, attention_mask=data.mask, interventions=both).logits
    halved = run(b, data.ids, attention_mask=data.mask, interventions=both[:1]).logits
    assert (alone - clean).abs().max() > 1.0
    assert (composed - alone).abs().max() > 0.1 and (composed - halved).abs().max() > 1.0
    assert both[1].describe().startswith("blade affine map 64→64")
    with pytest.raises(InterventionError, match="prepared for a longer text"):
        run(b, data.ids[:, :3], interventions=[inject(trained, "L1", *rows)])


def test_blade_part_round_trips_and_refuses_another_model(pair, sweep, garage_home):
    from engine.parts import PartsBin
    from engine.run import run
    from engine.transfer.blade_parts import BladeMismatchError, attach_blade, load_blade, run_blade, save_blade

    a, b, task = pair
    report = sweep.reports[1]
    record = save_blade(PartsBin(), a, b, report, name="tiny-blade")
    assert record.kind == "blade" and record.address == "L3.out"
    provenance = record.config
    assert provenance["model_a"]["config_hash"] == a.config_hash and provenance["address_a"] == "L3.out"
    assert provenance["task_digest"] == "tiny" and provenance["alignment"] == "same-token-positions"
    assert provenance["metrics"]["held_out"]["blade"]["loss"] == pytest.approx(report.held_out.blade.loss)
    part = load_blade(PartsBin(), "tiny-blade", loaded_a=a, loaded_b=b)
    assert report.blade is not None
    for name, value in report.blade.state_dict().items():
        assert torch.equal(part.blade.state_dict()[name], value)
    texts = [example.prompt for example in task.examples[-3:]]
    attached = attach_blade(part, a, b, texts)
    from_part = run(b, attached.ids, attention_mask=attached.mask, interventions=[attached.intervention]).logits
    memory = inject(report.blade, "L3.out", attached.intervention.donor_rows, attached.intervention.batch_index,
                    attached.intervention.position_index)
    assert torch.equal(from_part, run(b, attached.ids, attention_mask=attached.mask, interventions=[memory]).logits)
    shown = run_blade(part, a, b, task.examples[-1].prompt, top=3)
    answer_id = 3 + ord(task.examples[-1].answer)  # CharTokenizer's id of the answer character
    assert len(shown.on) == 3 and shown.model_a[0][0] == a.tokenizer.decode([answer_id])
    assert shown.interventions == ["blade tiny-blade into L3.out"]
    other = _tiny(layers=3, name="tiny-3")
    with pytest.raises(BladeMismatchError, match="as model B") as caught:
        load_blade(PartsBin(), "tiny-blade", loaded_b=other)
    assert "\n" not in str(caught.value) and other.config_hash in str(caught.value)
    with pytest.raises(BladeMismatchError, match="as model A"):
        attach_blade(part, other, b, texts)


def test_training_is_seeded_and_resumes_from_a_checkpoint_exactly(pair, tmp_path):
    a, b, task = pair
    data = encode_task(a, b, "L3.out", task.examples[:48])
    settings = TrainSettings(steps=12, batch_size=8, lr=1e-2, seed=3)

    def fresh() -> Blade:
        blade = Blade(64, 64, map_kind="lowrank", rank=4, gate="vector", seed=3)
        blade.set_scales(data.donor.rows.mean(0), float(data.donor.rows.std()), 1.0)
        return blade

    straight = fresh()
    log = train_blade(b, "L1.out", straight, data, settings)
    assert log.resumed_from == 0 and len(log.losses) == 12
    stopped, cancel = fresh(), threading.Event()
    checkpoint = tmp_path / "blade.ckpt"

    def stop_at_seven(stage: str, fraction: float | None) -> None:
        if fraction is not None and fraction >= 7 / 12:
            cancel.set()

    with pytest.raises(Cancelled):
        train_blade(b, "L1.out", stopped, data, settings, cancel=cancel, progress=stop_at_seven,
                    checkpoint=checkpoint, checkpoint_every=3)
    resumed = fresh()
    again = train_blade(b, "L1.out", resumed, data, settings, checkpoint=checkpoint, checkpoint_every=3)
    assert again.resumed_from == 6 and again.losses == pytest.approx(log.losses, rel=1e-5)
    for name, value in straight.state_dict().items():
        assert torch.allclose(resumed.state_dict()[name], value, atol=1e-6), name
    with pytest.raises(TransferError, match="other settings"):
        train_blade(b, "L1.out", fresh(), data, dataclasses.replace(settings, lr=0.5), checkpoint=checkpoint)


def test_a_blade_started_from_a_stitch_maps_exactly_as_the_stitch():
    from engine.transfer.stitch import Stitch

    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(24, 40, generator=generator), torch.randn(40, generator=generator)
    rows = torch.randn(10, 24, generator=generator) * 3 + 1
    x_mean = rows.mean(0)
    for stitch in (Stitch("ridge", 24, 40, weight, bias),
                   Stitch("lowrank", 24, 40, weight, bias, rank=24)):
        blade = blade_from_stitch(stitch, x_mean=x_mean, x_scale=2.5, y_scale=7.0)
        assert torch.allclose(blade.mapped(rows), stitch.apply(rows), rtol=1e-4, atol=1e-3), stitch.kind
        assert blade.map_kind == {"ridge": "affine", "lowrank": "lowrank"}[stitch.kind]
        assert torch.equal(blade(rows), torch.zeros(10, 40))  # gate shut
    encoder, decoder = torch.nn.Linear(24, 16), torch.nn.Linear(16, 40)
    ae = Stitch("ae", 24, 40, encoder=encoder, decoder=decoder, x_mean=x_mean, x_scale=2.0,
                y_mean=torch.randn(40, generator=generator), y_scale=3.0)
    blade = blade_from_stitch(ae, x_mean=x_mean, x_scale=1.0, y_scale=1.0)
    assert torch.allclose(blade.mapped(rows), ae.apply(rows), atol=1e-4)


def test_random_control_keeps_every_injected_norm():
    blade = Blade(8, 12, gate="vector", seed=1)
    with torch.no_grad():
        blade.gate.fill_(0.7)
    rows = torch.randn(5, 8)
    control = blade.random_control()
    with torch.no_grad():
        added, turned = blade(rows), control(rows)
    assert torch.allclose(added.norm(dim=-1), turned.norm(dim=-1), rtol=1e-5)
    assert float(torch.nn.functional.cosine_similarity(added, turned, dim=-1).abs().mean()) < 0.8


def test_bad_requests_are_refused_in_one_line(tmp_path, pair):
    a, b, task = pair
    with pytest.raises(TransferError, match="no task named 'nope'"):
        load_blade_task("nope")
    capitals = load_blade_task("capitals")
    assert capitals.examples[0] == TaskExample("The capital of France is", " Paris") and len(capitals.digest) == 16
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "answer": "y"}\n{"prompt": "no answer"}\n')
    with pytest.raises(TransferError, match="line 2 needs a non-empty"):
        load_blade_task(str(bad))
    with pytest.raises(TransferError, match="unknown blade map"):
        Blade(4, 4, map_kind="mlp")
    from engine.limits import LimitError

    with pytest.raises(LimitError, match="residual width"):
        Blade(10**9, 4)
    with pytest.raises(LimitError, match="training steps"):
        TrainSettings(steps=0).checked()
    with pytest.raises(TransferError, match="B has layers 0–3"):
        sweep_depths(a, b, "L3", [7], task)


class _ChunkTokenizer:
    """``size`` characters per token, a BOS token (offsets (0, 0)) first; gives offsets like a fast tokenizer."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, text: str, return_tensors: str | None = None, add_special_tokens: bool = True,
                 return_offsets_mapping: bool = False):
        from types import SimpleNamespace

        spans = [(start, min(start + self.size, len(text))) for start in range(0, len(text), self.size)]
        spans = ([(0, 0)] if add_special_tokens else []) + spans
        ids = [1 if end == start else 3 + sum(map(ord, text[start:end])) % 100 for start, end in spans]
        return SimpleNamespace(input_ids=torch.tensor([ids]) if return_tensors else ids, offset_mapping=spans)

    def get_vocab(self) -> dict[str, int]:
        return {f"{self.size}:{i}": i for i in range(103)}


def test_different_tokenizers_pair_where_both_end_a_token_at_the_same_character():
    from types import SimpleNamespace

    from engine.transfer.blade_data import _paired, _same_tokenizers

    a, b = SimpleNamespace(tokenizer=_ChunkTokenizer(2)), SimpleNamespace(tokenizer=_ChunkTokenizer(3))
    assert not _same_tokenizers(a.tokenizer, b.tokenizer, "abcdef")
    # "abcdefg" + " xy": A's tokens end at 2,4,6,7 then 9,10; B's at 3,6,7 then 10
    full_a, full_b, prompt_b, positions_a, positions_b = _paired(a, b, False, "abcdefg", " xy")
    assert len(full_a) == 1 + 4 + 2 and len(full_b) == 1 + 3 + 1 and prompt_b == 4
    assert positions_a == [3, 4, 6] and positions_b == [2, 3, 4]  # char ends 6, 7, 10 (BOS never pairs)
    same = _paired(a, a, True, "abcdefg", " xy")
    assert same[3] == same[4] == list(range(1, 7))
