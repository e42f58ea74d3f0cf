"""Attribution on SmolLM2: AtP and EAP-IG against exact patching of every head; CLI, snapshots, refusals.

Exact patching of all 270 heads is the expensive part, so each task is attributed and
checked once per module (short prompts, a few pairs, batched patching with the corrupted
run replayed up to the patched layer).
"""

from __future__ import annotations

import json

import pytest

from engine.attribution import PromptPair, attributor_for, load_task
from engine.attribution.recheck import agreement
from engine.errors import GarageError

pytestmark = pytest.mark.slow
PAIRS = {"capitals": 2, "ioi": 2}
IG_STEPS = 5


@pytest.fixture(scope="module")
def checked(smollm2):
    """Per task: the AtP and EAP-IG reports, and the exact effect of every head."""
    results = {}
    for task, count in PAIRS.items():
        job = attributor_for(smollm2, load_task(task, count), task)
        atp = job.score("atp")
        job.check_heads(atp)
        eap = job.score("eap")
        ig = job.score("eap-ig", IG_STEPS)
        exact = [value for row in atp.exact_heads for value in row]
        results[task] = (job, atp, eap, ig, exact)
    return results


@pytest.mark.parametrize("task", sorted(PAIRS))
def test_atp_ranks_heads_like_exact_patching(checked, task):
    job, atp, eap, ig, exact = checked[task]
    check = atp.head_check
    print(f"\n{task}: AtP over all heads ρ={check.spearman:.3f} recall@10={check.recall:.2f}")
    assert check.n == 270
    assert check.spearman >= 0.8
    assert check.recall >= 0.8
    # the task really moves the metric, and the exact values are not all alike
    assert atp.clean_metric - atp.corrupt_metric > 3
    assert max(abs(v) for v in exact) > 0.3


@pytest.mark.xfail(strict=True, reason=(
    "measured on SmolLM2 (2 pairs each): EAP-IG ranks single heads worse than EAP/AtP at every K — "
    "capitals ρ 0.724 (K=5, 10 and 20 alike: converged) vs 0.995, IOI 0.586/0.588 (K=5/20) vs 0.954; the "
    "reference's left-endpoint rule (α = k/K, which includes EAP's own gradient) gives 0.789→0.743 and "
    "0.646→0.600 as K grows. Integrated gradients scores a head's share of the *joint* clean→corrupted "
    "change; a lone patch leaves the other heads corrupted, so interactions make the two differ. "
    "EAP-IG's circuits are the more faithful instead (test below)"))
@pytest.mark.parametrize("task", sorted(PAIRS))
def test_eap_ig_ranks_heads_at_least_as_well_as_eap(checked, task):
    job, atp, eap, ig, exact = checked[task]
    eap_check = agreement("heads", eap.scores.heads.flatten().tolist(), exact, 10)
    ig_check = agreement("heads", ig.scores.heads.flatten().tolist(), exact, 10)
    print(f"\n{task}: EAP ρ={eap_check.spearman:.3f} EAP-IG(K={IG_STEPS}) ρ={ig_check.spearman:.3f} "
          f"recall {eap_check.recall:.2f} / {ig_check.recall:.2f}")
    assert ig_check.spearman >= eap_check.spearman


@pytest.fixture(scope="module")
def circuits(smollm2):
    """Per task, over every shipped pair (no exact sweep here, so all pairs are cheap): EAP and EAP-IG
    reports with their circuit faithfulness. Two pairs are too few: capitals ties there (mean 0.340 vs 0.338)."""
    results = {}
    for task in PAIRS:
        job = attributor_for(smollm2, load_task(task), task)
        reports = [job.score("eap"), job.score("eap-ig", IG_STEPS)]
        for report in reports:
            job.faithfulness(report)
        results[task] = (job.score("atp"), *reports)
    return results


@pytest.mark.parametrize("task", sorted(PAIRS))
def test_eap_ig_circuits_are_at_least_as_faithful_as_eap(circuits, task):
    atp, eap, ig = circuits[task]
    # the paper's own yardstick: the top-n heads and MLPs alone (every other one corrupted)
    shown = {name: " ".join(f"{n}:{v:.3f}" for n, v in
                            zip(r.faithfulness.sizes, r.faithfulness.recovered, strict=True))
             for name, r in (("EAP", eap), ("EAP-IG", ig))}
    print(f"\n{task}: circuit faithfulness EAP {shown['EAP']} | EAP-IG {shown['EAP-IG']}")
    assert eap.faithfulness.sizes == ig.faithfulness.sizes == [1, 2, 5, 10, 20, 50] and ig.n_pairs >= 10
    assert eap.faithfulness.difference == pytest.approx(atp.clean_metric - atp.corrupt_metric)
    # the curve is real: a few components carry little, fifty carry most of the difference
    assert ig.faithfulness.recovered[0] < 0.5 < ig.faithfulness.recovered[-1]
    mean = {name: sum(r.faithfulness.recovered) / len(r.faithfulness.recovered)
            for name, r in (("eap", eap), ("ig", ig))}
    assert mean["ig"] >= mean["eap"]


@pytest.mark.parametrize("task", sorted(PAIRS))
def test_eap_heads_are_atp_heads_and_ig_is_closer_on_its_top_nodes(checked, task):
    job, atp, eap, ig, exact = checked[task]
    # EAP's head nodes are its outgoing edges' sums, which are AtP's head scores
    heads = eap.scores.heads.flatten()
    assert (heads - atp.scores.heads.flatten()).abs().max() <= 1e-6 * heads.abs().max()
    # the largest nodes (residual positions) are where one gradient is far off and the path integral is not
    job.score("atp")  # the re-check reuses the clean run, the same for every method
    atp_top = job.recheck(eap, top=10)
    ig_top = job.recheck(ig, top=10)
    print(f"\n{task}: top-10 re-check mean |error| EAP {atp_top.mean_abs_error:.3f}, "
          f"EAP-IG {ig_top.mean_abs_error:.3f}")
    assert ig_top.mean_abs_error < atp_top.mean_abs_error


def test_last_residual_patch_restores_the_whole_difference(checked):
    job, atp, eap, ig, exact = checked["capitals"]
    top = job.recheck(atp, top=5)
    assert top.n == 5 and all(entry.exact is not None for entry in atp.nodes[:5])
    last = [entry for entry in atp.nodes if entry.address == "L29.out@4"][0]
    # patching the final residual at the last token is the clean run: AtP is exact there
    assert last.exact is None or last.exact == pytest.approx(atp.clean_metric - atp.corrupt_metric, rel=1e-4)
    assert job.exact([last.node])[0] == pytest.approx(atp.clean_metric - atp.corrupt_metric, rel=1e-4)
    # the final norm is not linear, so AtP only approximates it there, from below
    assert 0.5 * (atp.clean_metric - atp.corrupt_metric) < last.score < atp.clean_metric - atp.corrupt_metric


def test_unequal_token_lengths_are_refused(smollm2):
    pair = PromptPair("The capital of France is", "The capital of the United Kingdom is", " Paris", " London")
    with pytest.raises(GarageError, match="equal token length"):
        attributor_for(smollm2, [pair])
    with pytest.raises(GarageError, match="single token"):
        attributor_for(smollm2, [PromptPair("The capital of France is", "The capital of Italy is",
                                            " Parisian capital", " Rome")])


def test_every_bundled_pair_is_valid_for_smollm2(smollm2):
    from engine.attribution.tasks import encode_pairs

    for task in ("capitals", "antonyms", "ioi", "sentiment"):
        groups = encode_pairs(smollm2, load_task(task))
        assert sum(group.size for group in groups) == len(load_task(task))


def test_cli_json_snapshot_and_diff(smollm2, tmp_path, monkeypatch, capsys):
    from garage_tui import cli
    from garage_tui.commands import attribute_cmd

    monkeypatch.setattr(attribute_cmd, "open_from_args", lambda args: smollm2)
    first, second = tmp_path / "atp.safetensors", tmp_path / "ig.safetensors"
    code = cli.main(["attribute", "smollm2-135m", "--clean", "The capital of France is",
                     "--corrupt", "The capital of Italy is", "--answer", " Paris", "--wrong", " Rome",
                     "--top", "3", "--json", "--out", str(first)])
    document = json.loads(capsys.readouterr().out)
    assert code == 0 and document["method"] == "atp" and "denoising" in document["convention"]
    assert len(document["top_nodes"]) == 3 and all(n["exact"] is not None for n in document["top_nodes"])
    assert len(document["heads"]) == 30 and len(document["heads"][0]) == 9
    assert document["recheck"]["n"] == 3
    assert document["faithfulness"]["sizes"] == [1, 2, 5, 10, 20, 50]
    code = cli.main(["attribute", "smollm2-135m", "--task", "capitals", "--pairs", "1", "--method", "eap-ig",
                     "--ig-steps", "2", "--top", "2", "--out", str(second)])
    shown = capsys.readouterr().out
    assert code == 0 and "top edges" in shown and "Spearman" in shown and "denoising" in shown
    assert "circuit faithfulness" in shown
    assert cli.main(["diff", str(first), str(second), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert {e["address"] for e in diff["entries"]} >= {"attribution.heads", "attribution.mlp"}
    assert diff["only_in_b"] == ["attribution.edges"]
    assert cli.main(["attribute", "smollm2-135m", "--clean", "a b c", "--corrupt", "a b c d e",
                     "--answer", " x", "--wrong", " y"]) == 2
    assert "equal token length" in capsys.readouterr().err
