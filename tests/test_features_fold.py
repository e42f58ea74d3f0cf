"""Folding feature scales into decoder rows: per architecture the folded coder equals the runtime
scale edit on its parent; the folded part in the bin keeps its parent's binding and provenance;
`garage sae fold`; an exact splice of a folded coder is refused (its error term would cancel the
fold); the workbench prefers an unfolded part; and on real SmolLM2 the lossy splice of the folded
part gives the runtime scale's logits (slow)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from engine.features.attach import FeatureEdit, FeatureSplice, splice
from engine.features.coder import CoderConfig, SparseCoder
from engine.features.errors import FeatureError, FeatureFormatError, FeatureMismatchError
from engine.features.fold import fold_feature_scale, fold_part
from engine.features.formats import export_saelens, read_coder, tensors_equal_bytes
from engine.features.parts import load_coder, save_coder
from engine.parts import PartsBin
from engine.parts.errors import PartNameError

D_IN, D_SAE, D_OUT = 12, 40, 10


def _coder(arch: str, *, normalize: str = "none", source: str = "saelens", seed: int = 0) -> SparseCoder:
    g = torch.Generator().manual_seed(seed)
    transcoder = "transcoder" in arch
    d_out = D_OUT if transcoder else D_IN
    tensors = {"W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.4,
               "W_dec": torch.randn(D_SAE, d_out, generator=g) * 0.3,
               "b_dec": torch.randn(d_out, generator=g) * 0.1}
    if arch == "gated":
        tensors.update(b_gate=torch.randn(D_SAE, generator=g) * 0.1, r_mag=torch.randn(D_SAE, generator=g) * 0.1,
                       b_mag=torch.randn(D_SAE, generator=g) * 0.1)
    else:
        tensors["b_enc"] = torch.randn(D_SAE, generator=g) * 0.1
    if arch in ("jumprelu", "jumprelu_transcoder"):
        tensors["threshold"] = torch.rand(D_SAE, generator=g) * 0.2
    if arch == "skip_transcoder":
        tensors["W_skip"] = torch.randn(d_out, D_IN, generator=g) * 0.2
    k = 6.0 if arch in ("topk", "batchtopk") or source == "sparsify" else None
    config = CoderConfig(arch, D_IN, D_SAE, d_out, k=k, apply_b_dec_to_input=not transcoder,
                         normalize_activations=normalize, source_format=source)
    return SparseCoder(config, tensors)


def _x(rows: int = 9) -> torch.Tensor:
    return torch.randn(rows, D_IN, generator=torch.Generator().manual_seed(3)) * 2.0


def _firing(coder: SparseCoder, x: torch.Tensor, n: int = 3) -> list[int]:
    """The n features with the most total activation on x, so scaling them changes the output."""
    return [int(i) for i in coder.encode(x).sum(0).topk(n).indices]


CASES = [("standard", "none", "saelens"), ("topk", "none", "saelens"), ("batchtopk", "none", "saelens"),
         ("jumprelu", "none", "saelens"), ("gated", "none", "saelens"), ("transcoder", "none", "saelens"),
         ("skip_transcoder", "none", "saelens"), ("jumprelu_transcoder", "none", "saelens"),
         ("standard", "layer_norm", "saelens"), ("topk", "constant_norm_rescale", "saelens"),
         ("topk", "none", "sparsify")]


@pytest.mark.parametrize(("arch", "normalize", "source"), CASES)
def test_fold_equals_the_runtime_scale_per_architecture(arch, normalize, source):
    parent = _coder(arch, normalize=normalize, source=source)
    before = {name: t.clone() for name, t in parent.tensors.items()}
    x = _x()
    features = _firing(parent, x)
    scales = {features[0]: 0.5, features[1]: 0.0, features[2]: 3.0}  # a scale, a folded ablation, a boost
    folded = fold_feature_scale(parent, scales)
    acts = parent.encode(x)
    edited = acts
    for feature, factor in scales.items():
        edited = FeatureEdit("scale", [feature], factor).apply(edited)
    runtime = parent.decode(edited, x)
    out = folded.forward(x)
    assert (out - runtime).abs().max() <= 1e-6 * runtime.abs().max()
    assert (out - parent.forward(x)).abs().max() > 1e-2  # the scaled features fired: the fold changed the output
    torch.testing.assert_close(folded.encode(x), acts, rtol=0, atol=0)  # the encoder is untouched
    for name, tensor in before.items():  # the parent is never changed
        assert torch.equal(parent.tensors[name], tensor)
    for name in parent.tensors:
        if name != "W_dec":
            assert torch.equal(folded.tensors[name], parent.tensors[name])  # skip term, biases: untouched
    rows = torch.ones(D_SAE)
    for feature, factor in scales.items():
        rows[feature] = factor
    torch.testing.assert_close(folded.W_dec, parent.W_dec * rows[:, None], rtol=0, atol=0)


def test_fold_in_a_lossy_splice_matches_runtime_and_an_exact_one_is_refused():
    from engine.run import run
    from tests.tiny_models import tiny_model

    llama = tiny_model("llama", seed=1)
    ids = torch.tensor([[1, 5, 9, 33, 17, 64, 2, 90]])
    g = torch.Generator().manual_seed(2)
    w_dec = torch.randn(128, 64, generator=g)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    parent = SparseCoder(CoderConfig("topk", 64, 128, 64, k=8.0),
                         {"W_enc": w_dec.T.contiguous(), "b_enc": torch.zeros(128), "W_dec": w_dec,
                          "b_dec": torch.zeros(64)})
    x = run(llama, ids, capture=["L1.out"]).tap["L1.out"][0]
    features = _firing(parent, x, 2)
    scales = {features[0]: 0.0, features[1]: 2.0}
    folded = fold_feature_scale(parent, scales)
    edits = [FeatureEdit("scale", [f], s) for f, s in scales.items()]
    runtime = run(llama, ids, interventions=[splice(parent, "L1.out", exact=False, edits=edits)]).logits
    lossy = run(llama, ids, interventions=[splice(folded, "L1.out", exact=False)]).logits
    unscaled = run(llama, ids, interventions=[splice(parent, "L1.out", exact=False)]).logits
    assert (lossy - runtime).abs().max() <= 1e-6 * runtime.abs().max()
    assert (lossy - unscaled).abs().max() > 1e-3
    # why the refusal: with the marker cleared, the exact splice's error term cancels the fold and
    # the run is the unspliced one, silently
    unmarked = SparseCoder(dataclasses.replace(folded.config, folded_from=None), folded.tensors)
    plain = run(llama, ids).logits
    cancelled = run(llama, ids, interventions=[splice(unmarked, "L1.out")]).logits
    assert (cancelled - plain).abs().max() <= 1e-5
    assert folded.config.folded_from == "" and parent.config.folded_from is None  # a bare coder: no part name
    with pytest.raises(FeatureError, match="attach it lossy, or attach its unfolded parent with a scale edit") \
            as caught:
        splice(folded, "L1.out")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("this coder has feature scales folded")
    # a splice built directly (or flipped to exact later) is refused when the run plans it
    flipped = splice(folded, "L1.out", exact=False)
    flipped.exact = True
    with pytest.raises(FeatureError, match="error term cancels them"):
        run(llama, ids, interventions=[flipped])
    # the parent with the runtime scale keeps the error term and does scale: the advertised alternative
    kept = run(llama, ids, interventions=[splice(parent, "L1.out", edits=edits)]).logits
    assert (kept - plain).abs().max() > 1e-3


def test_fold_refuses_bad_features_and_factors():
    parent = _coder("topk")
    for scales, message in [({D_SAE: 0.5}, "out of range: this coder has features 0–39"),
                            ({-1: 0.5}, "out of range"), ({3: float("nan")}, "not a finite number"),
                            ({3: float("inf")}, "not a finite number"), ({}, "nothing to fold"),
                            ({True: 2.0}, "not an integer index"), ({2.0: 2.0}, "not an integer index")]:
        with pytest.raises(FeatureError, match=message) as caught:
            fold_feature_scale(parent, scales)  # type: ignore[arg-type]
        assert "\n" not in str(caught.value)


def _wide_topk(seed: int) -> SparseCoder:
    """A topk SAE for the tiny Llama's 64-wide residual."""
    g = torch.Generator().manual_seed(seed)
    return SparseCoder(CoderConfig("topk", 64, D_SAE, 64, k=6.0, hook_name="blocks.1.hook_resid_post"),
                       {"W_enc": torch.randn(64, D_SAE, generator=g), "b_enc": torch.zeros(D_SAE),
                        "W_dec": torch.randn(D_SAE, 64, generator=g), "b_dec": torch.zeros(64)})


@pytest.fixture()
def tiny_llama():
    from tests.tiny_models import tiny_model

    return tiny_model("llama", seed=1)


def test_fold_part_is_a_new_bound_part_with_provenance(tiny_llama, garage_home, tmp_path):
    from tests.tiny_models import tiny_model

    bin_ = PartsBin()
    parent = _wide_topk(seed=4)
    record = save_coder(bin_, tiny_llama, parent, "L1.out", name="sae1", metrics={"explained_variance": 0.9})
    parent_file = record.path.read_bytes() if record.path else b""
    result = fold_part(bin_, "sae1", {7: 0.25, 2: 0.0})
    assert result.name == "sae1-fold" and result.parent == "sae1" and result.parent_sha256 == record.sha256
    assert result.features == [2, 7] and result.factors == [0.0, 0.25] and result.address == "L1.out"
    again = fold_part(bin_, "sae1", {7: 2.0})
    assert again.name == "sae1-fold-2"  # never overwrites: a free name
    assert (record.path.read_bytes() if record.path else b"") == parent_file
    folded = load_coder(bin_, "sae1-fold", tiny_llama)  # same model: accepted
    assert folded.record.sha256 == result.sha256 and folded.record.kind == "sae"
    assert folded.metrics == {}  # the parent's reconstruction metrics do not describe the fold
    fold_doc = folded.record.config["fold"]
    assert fold_doc["parent_sha256"] == record.sha256 and fold_doc["features"] == [2, 7]
    assert fold_doc["factors"] == [0.0, 0.25] and fold_doc["created_at"] == result.created_at
    assert folded.record.source["config_hash"] == tiny_llama.config_hash
    torch.testing.assert_close(folded.coder.W_dec[7], parent.W_dec[7] * 0.25, rtol=0, atol=0)
    assert torch.equal(folded.coder.W_dec[2], torch.zeros(64))
    assert torch.equal(load_coder(bin_, "sae1").coder.W_dec, parent.W_dec)
    # the marker round-trips through the bin: stored in the part's coder config, restored on load
    assert folded.record.config["coder"]["folded_from"] == "sae1" and folded.coder.config.folded_from == "sae1"
    assert load_coder(bin_, "sae1").coder.config.folded_from is None
    assert "folded_from" not in load_coder(bin_, "sae1").record.config["coder"]  # unfolded parts store as before
    with pytest.raises(FeatureError, match="part 'sae1-fold' has feature scales folded .* attach it lossy, or "
                                           "attach the parent part 'sae1' with a scale edit"):
        splice(folded.coder, "L1.out", part="sae1-fold")
    splice(folded.coder, "L1.out", exact=False, part="sae1-fold")  # lossy: accepted
    refold = fold_part(bin_, "sae1-fold", {3: 2.0}, name="sae1-refold")
    assert load_coder(bin_, refold.name).coder.config.folded_from == "sae1"  # a fold of a fold names the root
    with pytest.raises(FeatureMismatchError, match="only reads the model it was trained on"):
        load_coder(bin_, "sae1-fold", tiny_model("gpt2"))
    with pytest.raises(PartNameError, match="already in the bin"):
        fold_part(bin_, "sae1", {1: 2.0}, name="sae1")
    pickle = tmp_path / "sae.pt"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(FeatureFormatError, match="never unpickles"):
        fold_part(bin_, str(pickle), {1: 2.0})
    with pytest.raises(FeatureError, match="import it first"):
        fold_part(bin_, str(tmp_path), {1: 2.0})

    # the folded part exports as a plain SAELens folder: the parent's config, only the folded rows differ
    export_saelens(load_coder(bin_, "sae1").coder, tmp_path / "parent")
    export_saelens(folded.coder, tmp_path / "folded")
    assert json.loads((tmp_path / "folded" / "cfg.json").read_text()) == json.loads(
        (tmp_path / "parent" / "cfg.json").read_text())  # the marker stays out of SAELens's cfg.json
    parent_t, folded_t = (load_file(str(tmp_path / d / "sae_weights.safetensors")) for d in ("parent", "folded"))
    assert tensors_equal_bytes({k: v for k, v in parent_t.items() if k != "W_dec"},
                               {k: v for k, v in folded_t.items() if k != "W_dec"})
    changed = (parent_t["W_dec"] != folded_t["W_dec"]).any(dim=-1).nonzero().flatten().tolist()
    assert changed == [2, 7]
    assert torch.equal(read_coder(tmp_path / "folded").coder.W_dec, folded.coder.W_dec)


def test_workbench_prefers_an_unfolded_coder(tiny_llama, garage_home):
    from engine.errors import GarageError
    from garage_tui.controller import Workbench

    bin_ = PartsBin()
    save_coder(bin_, tiny_llama, _wide_topk(seed=6), "L1.out", name="z-sae")
    fold_part(bin_, "z-sae", {4: 0.5}, name="a-fold")
    listed = [r.name for r in bin_.list(kind="sae")]
    assert listed.index("a-fold") < listed.index("z-sae")  # the fold is listed first, so preferring it is a choice
    bench = Workbench(parts_bin=bin_)
    assert bench.coder_for(tiny_llama, "L1") == "z-sae"
    assert bench.coder_for(tiny_llama, "L1.out") == "z-sae"
    bin_.remove("z-sae")
    assert bench.coder_for(tiny_llama, "L1") == "a-fold"  # a folded part only when nothing else reads there
    with pytest.raises(GarageError, match="no SAE part in the parts bin reads L0"):
        bench.coder_for(tiny_llama, "L0")


def garage(capsys, *argv: str) -> tuple[int, str, str]:
    from garage_tui.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_fold_json_and_refusals(tiny_llama, garage_home, capsys):
    parent = _wide_topk(seed=5)
    save_coder(PartsBin(), tiny_llama, parent, "L1.out", name="cli-sae")
    code, out, err = garage(capsys, "sae", "fold", "cli-sae", "--feature", "3", "--feature", "9", "--scale", "0.5",
                            "--scale", "0", "--name", "cli-fold", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["name"] == "cli-fold" and doc["features"] == [3, 9] and doc["factors"] == [0.5, 0.0]
    assert doc["parent"] == "cli-sae" and "exact splice is refused" in doc["exact_splice"]
    folded = load_coder(PartsBin(), "cli-fold").coder
    torch.testing.assert_close(folded.W_dec[3], parent.W_dec[3] * 0.5, rtol=0, atol=0)
    code, out, err = garage(capsys, "sae", "fold", "cli-sae", "--feature", "5", "--scale", "2")
    assert code == 0 and "cli-sae-fold" in out and "attach it lossy" in out
    for argv, message in [(("--feature", str(D_SAE), "--scale", "0.5"), "out of range"),
                          (("--feature", "1", "--feature", "2", "--scale", "1", "--scale", "2", "--scale", "3"),
                           "2 --feature but 3 --scale"),
                          (("--feature", "1", "--feature", "1", "--scale", "2"), "given twice")]:
        code, out, err = garage(capsys, "sae", "fold", "cli-sae", *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    with pytest.raises(SystemExit) as stopped:  # the CLI's float type refuses nan before the verb runs
        garage(capsys, "sae", "fold", "cli-sae", "--feature", "1", "--scale", "nan")
    assert stopped.value.code == 2 and "not a finite number" in capsys.readouterr().err
    code, _, err = garage(capsys, "sae", "fold", "no-such-part", "--feature", "1", "--scale", "2")
    assert code == 2 and "no part named 'no-such-part'" in err
    assert sorted(r.name for r in PartsBin().list(kind="sae")) == ["cli-fold", "cli-sae", "cli-sae-fold"]


@pytest.mark.slow
def test_folded_part_on_smollm2_equals_the_runtime_scale(smollm2, garage_home):
    from engine.run import run
    from engine.runner import encode

    at = "L15.out"
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(1024, 576, generator=g)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    parent = SparseCoder(CoderConfig("topk", 576, 1024, 576, k=32.0, hook_name="blocks.15.hook_resid_post"),
                         {"W_enc": w_dec.T.contiguous(), "b_enc": torch.zeros(1024), "W_dec": w_dec,
                          "b_dec": torch.zeros(576)})
    save_coder(PartsBin(), smollm2, parent, at, name="smol-sae")
    ids = encode(smollm2, "The mechanic opened the engine and looked at every part.")
    x = run(smollm2, ids, capture=[at]).tap[at][0]
    features = _firing(parent, x, 3)
    unscaled = run(smollm2, ids, interventions=[splice(parent, at, exact=False)]).logits
    # power-of-two factors scale without rounding, so fold and runtime round alike (measured: bit-equal);
    # other factors round a·s versus s·w differently, ~1e-6 relative after 15 more layers (measured ≤ 2.4e-6)
    for factors, bound, name in [((0.5, 0.0, 4.0), 1e-6, "smol-fold"), ((0.3, 0.0, 1.7), 5e-6, "smol-fold-b")]:
        scales = dict(zip(features, factors, strict=True))
        fold_part(PartsBin(), "smol-sae", scales, name=name)
        folded = load_coder(PartsBin(), name, smollm2)  # bound to SmolLM2 like its parent
        edits = [FeatureEdit("scale", [f], s) for f, s in scales.items()]
        runtime = run(smollm2, ids, interventions=[splice(parent, at, exact=False, edits=edits)]).logits
        lossy = run(smollm2, ids, interventions=[splice(folded.coder, at, exact=False, part=name)]).logits
        relative = float((lossy - runtime).abs().max() / runtime.abs().max())
        assert relative <= bound and (lossy - runtime).abs().max() <= 1e-4, (factors, relative)
        assert (lossy - unscaled).abs().max() > 1e-2  # the fold matters, so the equality means something
    assert folded.coder.config.folded_from == "smol-sae"
    with pytest.raises(FeatureError, match="attach it lossy, or attach the parent part 'smol-sae' with a scale"):
        run(smollm2, ids, interventions=[FeatureSplice("features", at, coder=folded.coder, part=name)])
    # what the refusal prevents: unmarked, the exact splice's error term cancels the fold (the unspliced run)
    unmarked = SparseCoder(dataclasses.replace(folded.coder.config, folded_from=None), folded.coder.tensors)
    plain = run(smollm2, ids).logits
    cancelled = run(smollm2, ids, interventions=[splice(unmarked, at)]).logits
    assert (cancelled - plain).abs().max() <= 1e-5
