"""Feature parts on real SmolLM2: exact and lossy splices, feature edits, streamed feature statistics,
parts-bin binding, feature reading, directions and a bake checked by plain transformers."""

from __future__ import annotations

import pytest
import torch

from engine.features.attach import FeatureEdit, splice, stream_feature_stats
from engine.features.coder import CoderConfig, SparseCoder
from engine.features.errors import FeatureError, FeatureMismatchError
from engine.interventions import scale
from engine.run import run
from engine.runner import encode

pytestmark = pytest.mark.slow
AT = "L15.out"
PROMPT = "The mechanic opened the engine and looked at every part."


def _random_topk(d_in: int = 576, d_sae: int = 1024, k: int = 32, seed: int = 0) -> SparseCoder:
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    tensors = {"W_enc": w_dec.T.contiguous(), "b_enc": torch.zeros(d_sae), "W_dec": w_dec, "b_dec": torch.zeros(d_in)}
    return SparseCoder(CoderConfig("topk", d_in, d_sae, d_in, k=float(k), hook_name="blocks.15.hook_resid_post"),
                       tensors)


@pytest.fixture(scope="module")
def coder():
    return _random_topk()


def test_exact_splice_equals_unspliced_and_lossy_does_not(smollm2, coder):
    ids = encode(smollm2, PROMPT)
    plain = run(smollm2, ids, capture=[AT])
    exact = run(smollm2, ids, capture=[AT], interventions=[splice(coder, AT)])
    lossy = run(smollm2, ids, capture=[AT], interventions=[splice(coder, AT, exact=False)])
    assert (exact.tap[AT] - plain.tap[AT]).abs().max() <= 1e-5
    assert (exact.logits - plain.logits).abs().max() <= 1e-5
    assert (lossy.tap[AT] - plain.tap[AT]).abs().max() > 1e-2  # a random SAE reconstructs badly


def test_feature_edits_move_the_residual_by_their_decoder_rows(smollm2, coder):
    ids = encode(smollm2, PROMPT)
    plain = run(smollm2, ids, capture=[AT]).tap[AT][0]
    acts = coder.encode(plain)
    feature = int(acts.sum(0).argmax())
    ablated = run(smollm2, ids, capture=[AT],
                  interventions=[splice(coder, AT, edits=[FeatureEdit("ablate", [feature])])])
    want = plain - acts[:, feature:feature + 1] * coder.W_dec[feature]
    # float32 rounding: the BOS token's residual and reconstruction run to ~1e3 (an ulp is ~6e-5 there)
    torch.testing.assert_close(ablated.tap[AT][0], want, rtol=2e-6, atol=2e-4)
    steered = run(smollm2, ids, capture=[AT],
                  interventions=[splice(coder, AT, edits=[FeatureEdit("steer", [3, 7], 5.0)])])
    want = plain + 5.0 * (coder.W_dec[3] + coder.W_dec[7])
    torch.testing.assert_close(steered.tap[AT][0], want, rtol=2e-6, atol=2e-4)
    # composes with every other intervention: a head scale upstream changes what the SAE reads
    both = run(smollm2, ids, capture=[AT], interventions=[scale("L3.attn.h1", 0.0),
                                                          splice(coder, AT, edits=[FeatureEdit("ablate", [feature])])])
    assert (both.tap[AT][0] - ablated.tap[AT][0]).abs().max() > 1e-4
    with pytest.raises(FeatureError, match="out of range"):
        run(smollm2, ids, interventions=[splice(coder, AT, edits=[FeatureEdit("ablate", [5000])])])


def test_feature_stats_stream_like_any_capture_point(smollm2, coder):
    summary, fired, tokens = stream_feature_stats(smollm2, splice(coder, AT), [PROMPT, "Another short text."])
    prompts = [PROMPT, "Another short text."]
    resid = torch.cat([run(smollm2, encode(smollm2, p), capture=[AT]).tap[AT][0] for p in prompts])
    acts = coder.encode(resid)
    assert tokens == resid.shape[0] and summary.count == acts.numel()
    assert abs(summary.mean - float(acts.double().mean())) <= 1e-6
    assert torch.equal(fired, (acts > 0).sum(0))
    assert int(fired.sum()) <= 32 * tokens


def test_parts_bin_binds_a_coder_to_its_model_and_width(smollm2, coder, garage_home):
    from engine.features.parts import load_coder, save_coder
    from engine.parts import PartsBin
    from tests.tiny_models import tiny_model

    bin_ = PartsBin()
    record = save_coder(bin_, smollm2, coder, "blocks.15.hook_resid_post", name="smol-sae-l15")
    assert record.kind == "sae" and record.address == AT and record.source["config_hash"] == smollm2.config_hash
    part = load_coder(bin_, "smol-sae-l15", smollm2)
    assert torch.equal(part.coder.W_dec, coder.W_dec) and part.address == AT
    with pytest.raises(FeatureMismatchError, match="was made on 'smollm2-135m'"):
        load_coder(bin_, "smol-sae-l15", tiny_model("llama"))
    with pytest.raises(FeatureMismatchError, match="1536 wide but the coder/direction expects 576"):
        save_coder(bin_, smollm2, coder, "L15.mlp.hidden")
    ids = encode(smollm2, PROMPT)
    with pytest.raises(FeatureMismatchError, match="carries 1536 values per token"):
        run(smollm2, ids, interventions=[splice(coder, "L15.mlp.hidden")])


def test_read_feature_top_tokens_histogram_and_logit_effect(smollm2, coder):
    from engine.features.corpus import read_texts
    from engine.features.reading import read_feature, top_features

    top = top_features(smollm2, coder, AT, PROMPT, k=5)
    assert top and top == sorted(top, key=lambda f: -f.activation)
    feature = top[0].feature
    report = read_feature(smollm2, coder, AT, feature, read_texts(["sample"]), prompt=PROMPT, k=5, max_tokens=400)
    assert report.tokens_read > 100 and report.stats.count == report.tokens_read
    assert report.hits == sorted(report.hits, key=lambda h: -h.activation)
    assert abs(report.prompt_hits[0].activation - top[0].activation) <= 1e-4
    assert sum(report.stats.hist_counts) == report.tokens_read
    # the logit effect is W_U · (final-norm weight ⊙ decoder row), highest first
    w_u = smollm2.model.get_output_embeddings().weight
    gamma = smollm2.model.model.norm.weight
    logits = w_u @ (coder.W_dec[feature] * gamma)
    assert report.promoted[0].token_id == int(logits.argmax())
    assert report.suppressed[0].token_id == int(logits.argmin())


def test_directions_save_ablate_and_bake_on_smollm2(smollm2, garage_home, tmp_path):
    import transformers

    from engine.features.bake import BakeOp, bake
    from engine.features.directions import diffmean_direction, direction_edit, probe_direction, project_out
    from engine.features.parts import load_direction, save_direction
    from engine.parts import PartsBin

    positive = ["I love this, it is wonderful.", "What a great and happy day!"]
    negative = ["I hate this, it is awful.", "What a terrible and sad day!"]
    diff = diffmean_direction(smollm2, 12, positive, negative)
    probe, fit = probe_direction(smollm2, 12, positive, negative)
    assert fit.accuracy >= 0.9 and fit.tokens > 10
    cosine = float(torch.nn.functional.cosine_similarity(diff.vector, probe.vector, dim=0))
    assert cosine > 0.0  # both point from negative to positive
    bin_ = PartsBin()
    record = save_direction(bin_, smollm2, diff.vector, diff.address, method="diffmean", provenance=diff.provenance,
                            name="joy-l12")
    _, vector = load_direction(bin_, "joy-l12", smollm2)
    assert torch.equal(vector, diff.vector) and record.config["provenance"]["positive"] == positive
    ids = encode(smollm2, "Today the weather is")
    ablated = run(smollm2, ids, capture=["L12.out", "L20.out"], interventions=[direction_edit(vector, "writers")])
    unit = vector / vector.norm()
    assert float((ablated.tap["L20.out"][0] @ unit).abs().max()) <= 1e-3  # the stream never carries it
    assert (project_out(ablated.tap["L12.out"][0], unit) - ablated.tap["L12.out"][0]).abs().max() <= 1e-4
    result = bake(smollm2, [BakeOp("ablate_direction", vector=vector, direction_part="joy-l12",
                                   direction_digest=record.sha256)], tmp_path / "smol-no-joy")
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(result.output), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        baked = plain(input_ids=ids).logits
    assert (baked - ablated.logits).abs().max() <= 1e-4
    assert result.ops[0]["direction_digest"] == record.sha256
