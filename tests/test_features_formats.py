"""SAELens and sparsify folders: every architecture's encode/decode against the math written out by hand,
round trips byte-identical in tensors, pickles refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.features.errors import FeatureFormatError
from engine.features.formats import export_saelens, read_coder, tensors_equal_bytes, write_saelens_folder

D_IN, D_SAE, D_OUT = 12, 40, 10
TOL = 1e-6


def _base(arch: str, d_out: int = D_IN, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {"W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.3,
               "W_dec": torch.randn(D_SAE, d_out, generator=g) * 0.3,
               "b_dec": torch.randn(d_out, generator=g) * 0.1}
    if arch == "gated":
        tensors.update(b_gate=torch.randn(D_SAE, generator=g) * 0.1, r_mag=torch.randn(D_SAE, generator=g) * 0.1,
                       b_mag=torch.randn(D_SAE, generator=g) * 0.1)
    else:
        tensors["b_enc"] = torch.randn(D_SAE, generator=g) * 0.1
    if arch in ("jumprelu",):
        tensors["threshold"] = torch.rand(D_SAE, generator=g) * 0.3
    if arch == "skip_transcoder":
        tensors["W_skip"] = torch.randn(d_out, D_IN, generator=g) * 0.2
    return tensors


def _cfg(arch: str, **extra) -> dict:
    doc = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": arch not in ("transcoder", "skip_transcoder"), "normalize_activations": "none",
           "reshape_activations": "none", "metadata": {"hook_name": "blocks.3.hook_resid_post"}}
    doc.update(extra)
    return doc


def _x(rows: int = 7, d: int = D_IN) -> torch.Tensor:
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(9)) * 2.0


def _hand(arch: str, t: dict, x: torch.Tensor, k: int = 0, b_dec_in: bool = True):
    """The reference definitions, spelled out with no shared code."""
    sae_in = x - t["b_dec"] if b_dec_in else x
    if arch == "gated":
        gate = (sae_in @ t["W_enc"] + t["b_gate"] > 0).float()
        mag = torch.clamp(sae_in @ (t["W_enc"] * torch.exp(t["r_mag"])) + t["b_mag"], min=0)
        acts = gate * mag
    else:
        pre = sae_in @ t["W_enc"] + t["b_enc"]
        if arch == "jumprelu":
            acts = torch.where(pre > t["threshold"], torch.clamp(pre, min=0), torch.zeros_like(pre))
        elif arch == "topk":
            acts = torch.zeros_like(pre)
            for r in range(pre.shape[0]):
                order = sorted(range(pre.shape[1]), key=lambda j: -float(pre[r, j]))[:k]
                for j in order:
                    acts[r, j] = max(float(pre[r, j]), 0.0)
        else:
            acts = torch.clamp(pre, min=0)
    out = acts @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        out = out + x @ t["W_skip"].T
    return acts, out


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated", "transcoder", "skip_transcoder"])
def test_saelens_architectures_match_hand_math(tmp_path, arch):
    d_out = D_OUT if "transcoder" in arch else D_IN
    tensors = _base(arch, d_out)
    extra = {"k": 5} if arch == "topk" else {}
    if "transcoder" in arch:
        extra.update(d_out=D_OUT, hook_name_out="blocks.3.hook_mlp_out")
    folder = write_saelens_folder(tmp_path / arch, _cfg(arch, **extra), tensors)
    coder = read_coder(folder).coder
    x = _x()
    acts = coder.encode(x)
    out = coder.decode(acts, x)
    want_acts, want_out = _hand(arch, tensors, x, k=5, b_dec_in="transcoder" not in arch)
    assert (acts - want_acts).abs().max() <= TOL
    assert (out - want_out).abs().max() <= TOL
    assert out.shape[-1] == d_out
    if arch == "topk":
        assert int((acts > 0).sum(-1).max()) <= 5
    if arch in ("jumprelu", "gated", "standard"):
        assert 0 < int((acts > 0).sum()) < acts.numel()  # a test that cannot pass trivially


def test_batchtopk_training_form_and_inference_threshold(tmp_path):
    tensors = _base("standard")
    coder = read_coder(write_saelens_folder(tmp_path / "b", _cfg("batchtopk", k=3), tensors)).coder
    x = _x(rows=4)
    acts = coder.encode(x)
    pre = (x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    flat = torch.clamp(pre, min=0).flatten()
    keep = flat.topk(12).indices
    want = torch.zeros_like(flat)
    want[keep] = flat[keep]
    assert (acts - want.reshape(pre.shape)).abs().max() <= TOL
    assert int((acts > 0).sum()) == 12  # k × rows over the whole batch, not per row
    thresholded = dict(tensors, threshold=torch.full((D_SAE,), 0.2))
    coder = read_coder(write_saelens_folder(tmp_path / "j", _cfg("batchtopk", k=3), thresholded)).coder
    assert torch.equal(coder.encode(x) > 0, pre > 0.2)


def test_normalisations_and_hook_z(tmp_path):
    tensors = _base("standard")
    x = _x() * 5
    rescale = read_coder(write_saelens_folder(
        tmp_path / "c", _cfg("standard", normalize_activations="constant_norm_rescale"), tensors)).coder
    coeff = (D_IN ** 0.5) / x.norm(dim=-1, keepdim=True)
    pre = (x * coeff - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    acts = torch.clamp(pre, min=0)
    assert (rescale.encode(x) - acts).abs().max() <= TOL
    want = (acts @ tensors["W_dec"] + tensors["b_dec"]) / coeff
    assert (rescale.decode(rescale.encode(x), x) - want).abs().max() <= 1e-5
    layer_norm = read_coder(write_saelens_folder(
        tmp_path / "l", _cfg("standard", normalize_activations="layer_norm"), tensors)).coder
    mu = x.mean(-1, keepdim=True)
    std = (x - mu).std(-1, keepdim=True)
    pre = ((x - mu) / (std + 1e-5) - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    acts = torch.clamp(pre, min=0)
    assert (layer_norm.encode(x) - acts).abs().max() <= TOL
    assert (layer_norm.decode(acts, x) - ((acts @ tensors["W_dec"] + tensors["b_dec"]) * std + mu)).abs().max() <= 1e-5
    no_b_dec = read_coder(write_saelens_folder(tmp_path / "n", _cfg("standard", apply_b_dec_to_input=False,
                                                                     reshape_activations="hook_z"), tensors)).coder
    assert no_b_dec.config.reshape_activations == "hook_z"
    assert (no_b_dec.encode(x) - torch.clamp(x @ tensors["W_enc"] + tensors["b_enc"], min=0)).abs().max() <= TOL


def _sparsify_folder(tmp_path, transcode=False, skip=False):
    g = torch.Generator().manual_seed(3)
    raw = {"encoder.weight": torch.randn(D_SAE, D_IN, generator=g) * 0.3,
           "encoder.bias": torch.randn(D_SAE, generator=g) * 0.1,
           "W_dec": torch.randn(D_SAE, D_IN, generator=g) * 0.3, "b_dec": torch.randn(D_IN, generator=g) * 0.1}
    if skip:
        raw["W_skip"] = torch.randn(D_IN, D_IN, generator=g) * 0.1
    folder = tmp_path / "layers.3"
    folder.mkdir()
    save_file(raw, str(folder / "sae.safetensors"))
    cfg = {"expansion_factor": 32, "normalize_decoder": True, "num_latents": D_SAE, "k": 4, "multi_topk": False,
           "skip_connection": skip, "transcode": transcode, "d_in": D_IN}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder, raw


@pytest.mark.parametrize("transcode,skip", [(False, False), (True, True)])
def test_sparsify_matches_reference(tmp_path, transcode, skip):
    folder, raw = _sparsify_folder(tmp_path, transcode, skip)
    coder = read_coder(folder).coder
    x = _x()
    sae_in = x if transcode else x - raw["b_dec"]
    pre = torch.relu(sae_in @ raw["encoder.weight"].T + raw["encoder.bias"])  # sparsify: ReLU, then top-k
    top = pre.topk(4, dim=-1)
    rows = [top.values[r] @ raw["W_dec"][top.indices[r]] for r in range(x.shape[0])]
    want_out = torch.stack(rows) + raw["b_dec"]
    if skip:
        want_out = want_out + x @ raw["W_skip"].T
    acts = coder.encode(x)
    assert int((acts > 0).sum(-1).max()) <= 4
    assert (coder.decode(acts, x) - want_out).abs().max() <= TOL


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "gated", "skip_transcoder"])
def test_saelens_round_trip_is_byte_identical(tmp_path, arch):
    extra = {"d_out": D_OUT, "hook_name_out": "blocks.3.hook_mlp_out"} if arch == "skip_transcoder" else {}
    tensors = _base(arch, D_OUT if arch == "skip_transcoder" else D_IN)
    cfg = _cfg(arch, **extra)
    sparsity = torch.rand(D_SAE)
    imported = read_coder(write_saelens_folder(tmp_path / "in", cfg, tensors, sparsity))
    assert imported.sparsity is not None
    out = export_saelens(imported.coder, tmp_path / "out", imported.sparsity)
    written = load_file(str(out / "sae_weights.safetensors"))
    assert tensors_equal_bytes(written, load_file(str(tmp_path / "in" / "sae_weights.safetensors")))
    assert json.loads((out / "cfg.json").read_text()) == cfg
    assert torch.equal(load_file(str(out / "sparsity.safetensors"))["sparsity"], sparsity)


def test_sparsify_exports_to_saelens_with_equal_math(tmp_path):
    folder, _ = _sparsify_folder(tmp_path)
    coder = read_coder(folder).coder
    again = read_coder(export_saelens(coder, tmp_path / "saelens")).coder
    x = _x()
    assert again.config.architecture == "topk" and again.config.source_format == "saelens"
    assert (again.forward(x) - coder.forward(x)).abs().max() <= TOL


def test_pickles_and_bad_folders_are_refused(tmp_path):
    (tmp_path / "sae.pt").write_bytes(b"not really")
    with pytest.raises(FeatureFormatError, match="never unpickles.*Convert"):
        read_coder(tmp_path / "sae.pt")
    with pytest.raises(FeatureFormatError, match="never unpickles"):
        read_coder(tmp_path)
    with pytest.raises(FeatureFormatError, match="does not exist"):
        read_coder(tmp_path / "nope")
    bad = write_saelens_folder(tmp_path / "bad", _cfg("jumprelu"), _base("standard"))
    with pytest.raises(FeatureFormatError, match="missing tensors threshold"):
        read_coder(bad)
