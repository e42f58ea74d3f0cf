"""Attribution on tiny models: AtP equals exact patching on a linear model; edges sum to nodes."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from engine.attribution import Attributor, Graph, LayerSites, Node, spearman, top_k_recall
from engine.attribution.attributor import causal_lm_forward
from engine.attribution.nodes import graph_for
from engine.attribution.tasks import PairGroup, load_task, task_names
from engine.errors import Cancelled, GarageError

D_MODEL, HEADS, D_HEAD, LAYERS, VOCAB, LENGTH = 8, 2, 3, 3, 11, 4


class Scale(nn.Module):
    """A norm stand-in that stays linear: an elementwise gain."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(D_MODEL) + 0.5)

    def forward(self, x):
        return x * self.weight


class LinearAttention(nn.Module):
    """Heads that mix positions by a fixed causal average: linear in the residual stream."""

    def __init__(self) -> None:
        super().__init__()
        self.v_proj = nn.Linear(D_MODEL, HEADS * D_HEAD)
        self.o_proj = nn.Linear(HEADS * D_HEAD, D_MODEL)

    def forward(self, x):
        length = x.shape[1]
        mix = torch.tril(torch.ones(length, length, dtype=x.dtype))
        mix = mix / mix.sum(dim=1, keepdim=True)
        return self.o_proj(mix @ self.v_proj(x))


class LinearBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = Scale(), Scale()
        self.attn = LinearAttention()
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, 2 * D_MODEL), nn.Linear(2 * D_MODEL, D_MODEL))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LinearLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.layers = nn.ModuleList(LinearBlock() for _ in range(LAYERS))
        self.norm = Scale()
        self.lm_head = nn.Linear(D_MODEL, VOCAB)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def linear_graph() -> Graph:
    layers = tuple(LayerSites(z=f"layers.{i}.attn.o_proj", attn_out=f"layers.{i}.attn", mlp_out=f"layers.{i}.mlp",
                              resid_out=f"layers.{i}", attn_in=f"layers.{i}.norm1", mlp_in=f"layers.{i}.norm2")
                   for i in range(LAYERS))
    return Graph(layers, HEADS, D_HEAD, "embed", "norm")


def random_groups(seed: int = 0) -> list[PairGroup]:
    generator = torch.Generator().manual_seed(seed)
    groups = []
    for size, length in ((3, LENGTH), (2, LENGTH + 2)):
        ids = torch.randint(0, VOCAB, (2, size, length), generator=generator)
        answers = torch.randint(0, VOCAB, (size,), generator=generator)
        groups.append(PairGroup(list(range(size)), ids[0], ids[1], answers, (answers + 1) % VOCAB))
    return groups


@pytest.fixture(scope="module")
def linear_job() -> Attributor:
    torch.manual_seed(0)
    model = LinearLM().double().eval()
    return Attributor(model, linear_graph(), lambda m, ids: m(ids)[:, -1], random_groups(), name="linear")


def test_atp_equals_exact_patching_on_a_linear_model(linear_job):
    report = linear_job.score("atp")
    nodes = [entry.node for entry in report.nodes]
    exact = linear_job.exact(nodes)
    estimate = [entry.score for entry in report.nodes]
    assert len(nodes) == LAYERS * (HEADS + 2 + LENGTH)  # residual positions: the shorter group's length
    assert max(abs(a - b) for a, b in zip(estimate, exact, strict=True)) <= 1e-6
    assert max(abs(value) for value in exact) > 1e-2  # the patches really moved the metric
    assert report.clean_metric != pytest.approx(report.corrupt_metric)


def test_edges_sum_to_node_scores_and_ig_is_exact_when_linear(linear_job):
    eap = linear_job.score("eap")
    ig = linear_job.score("eap-ig", ig_steps=3)
    outgoing = eap.edges.outgoing()
    for layer in range(LAYERS):
        for head in range(HEADS):
            index = 1 + layer * (HEADS + 1) + head
            assert float(outgoing[index]) == pytest.approx(float(eap.scores.heads[layer, head]), abs=1e-9)
        assert float(outgoing[1 + layer * (HEADS + 1) + HEADS]) == pytest.approx(float(eap.scores.mlp[layer]), abs=1e-9)
    # the embedding feeds every later component: its edges sum to the metric's whole change
    assert float(outgoing[0]) == pytest.approx(eap.clean_metric - eap.corrupt_metric, abs=1e-9)
    # a linear model has one gradient everywhere, so integrated gradients change nothing
    assert torch.allclose(ig.edges.scores, eap.edges.scores, atol=1e-9)
    assert not eap.edges.allowed[1, 0]  # layer 0's head cannot feed layer 0's attention
    assert eap.edges.allowed[1, 1]  # but it feeds layer 0's MLP


def test_recheck_fills_the_top_nodes_and_agrees_on_a_linear_model(linear_job):
    report = linear_job.score("atp")
    filled: list[int] = []
    agreement = linear_job.recheck(report, top=5, on_chunk=lambda start, values: filled.append(len(values)))
    assert sum(filled) == 5
    assert all(entry.exact == pytest.approx(entry.score, abs=1e-6) for entry in report.nodes[:5])
    assert report.nodes[5].exact is None
    assert agreement.spearman == pytest.approx(1.0)
    head_check = linear_job.check_heads(report, k=3)
    assert head_check.recall == 1.0 and head_check.n == LAYERS * HEADS


def test_circuit_faithfulness_on_a_linear_model(linear_job):
    from engine.attribution.faithfulness import circuit_effects

    report = linear_job.score("atp")
    faith = linear_job.faithfulness(report, sizes=(1, 3, 100))
    assert faith.sizes == [1, 3, LAYERS * (HEADS + 1)]  # a size past every component keeps them all
    assert faith.recovered[-1] == pytest.approx(1.0, abs=1e-9)  # the whole model is the clean run
    assert report.to_dict()["faithfulness"]["recovered"] == faith.recovered
    # linear: a circuit of the last layer's heads and MLP carries exactly the embedding's paths through them,
    # which are the EAP edge scores embed → last attention, last MLP and logits
    edges = linear_job.score("eap").edges
    last = [Node("head", LAYERS - 1, h) for h in range(HEADS)] + [Node("mlp", LAYERS - 1)]
    carried = sum(circuit_effects(linear_job.model, linear_job.graph, linear_job.forward, group, passes.corrupt,
                                  passes.corrupt_metric, [last, []], linear_job.n_total)[0]
                  for group, passes in zip(linear_job.groups, linear_job.passes, strict=True))
    paths = float(edges.scores[0, -3:].sum())
    assert carried == pytest.approx(paths, abs=1e-9)
    assert abs(paths) > 1e-3 and abs(paths - float(edges.scores[0, -1])) > 1e-3


def test_tiny_llama_edges_sum_to_heads_and_ig_moves_toward_exact():
    from tests.tiny_models import tiny_model

    loaded = tiny_model("llama")
    graph = graph_for(loaded)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (2, 3, 6), generator=generator)
    group = PairGroup([0, 1, 2], ids[0], ids[1], torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10]))
    job = Attributor(loaded.model, graph, causal_lm_forward, [group])
    eap = job.score("eap")
    outgoing = eap.edges.outgoing()
    for layer in range(graph.n_layers):
        for head in range(graph.n_heads):
            assert float(outgoing[1 + layer * (graph.n_heads + 1) + head]) == pytest.approx(
                float(eap.scores.heads[layer, head]), rel=1e-4, abs=1e-7)
    # patching the whole last residual at the last token restores the clean metric exactly
    last = Node("resid", graph.n_layers - 1, position=-1)
    assert job.exact([last])[0] == pytest.approx(eap.clean_metric - eap.corrupt_metric, rel=1e-5)
    # the GQA model's heads are real nodes: exact patching of a head changes the metric
    assert any(abs(v) > 1e-6 for v in job.exact([Node("head", 1, h) for h in range(graph.n_heads)]))


def test_cancel_stops_scoring(linear_job):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        linear_job.score("atp", cancel=cancel)


def test_unknown_method_and_bad_steps_are_refused(linear_job):
    with pytest.raises(GarageError, match="unknown attribution method"):
        linear_job.score("ablate")
    with pytest.raises(GarageError, match="ig-steps"):
        linear_job.score("eap-ig", ig_steps=0)
    with pytest.raises(GarageError, match="over the garage's limit of 1,024"):  # one batch of K steps: refuse before it
        linear_job.score("eap-ig", ig_steps=10**9)


def test_rank_statistics():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties take mean ranks
    assert top_k_recall([5, -4, 0.1, 0.2], [-6, 0.3, 3, 0.1], 2) == 0.5


def test_bundled_tasks_load():
    assert set(task_names()) >= {"capitals", "antonyms", "ioi", "sentiment"}
    for name in task_names():
        pairs = load_task(name)
        assert len(pairs) >= 5 and all(p.clean != p.corrupt and p.answer != p.wrong for p in pairs)
    assert len(load_task("ioi", 3)) == 3
    with pytest.raises(GarageError, match="no task named"):
        load_task("nope")


def test_sandwich_norm_model_gives_node_scores_but_no_edges():
    import transformers as T

    from engine.anatomy import build_anatomy
    from engine.loading import LoadedModel, _model_class

    config = T.Gemma3TextConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                                head_dim=16, intermediate_size=96, vocab_size=128, sliding_window=4,
                                layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    model = _model_class(config).from_config(config).eval()
    loaded = LoadedModel(name="tiny-gemma3", source="memory", source_kind="memory", model=model, config=model.config,
                         tokenizer=None, anatomy=build_anatomy(model, model.config), device="cpu", dtype="float32",
                         structure_only=False)
    graph = graph_for(loaded)
    assert not graph.has_edges and graph.n_heads == 4
    ids = torch.randint(0, 128, (2, 2, 6), generator=torch.Generator().manual_seed(2))
    job = Attributor(model, graph, causal_lm_forward,
                     [PairGroup([0, 1], ids[0], ids[1], torch.tensor([3, 4]), torch.tensor([5, 6]))])
    with pytest.raises(GarageError, match="pre-norm"):
        job.score("eap")
    ig = job.score("eap-ig", ig_steps=2)
    assert ig.edges is None and ig.scores.heads.abs().sum() > 0
    atp = job.score("atp")
    last = Node("resid", 1, position=-1)
    assert job.exact([last])[0] == pytest.approx(atp.clean_metric - atp.corrupt_metric, rel=1e-5)
    # alone, L1's head is checked with block 0 replayed; beside an L0 node, with every block run
    replayed_value = job.exact([Node("head", 1, 2)])[0]
    full_value = job.exact([Node("head", 0, 0), Node("head", 1, 2)])[1]
    assert abs(replayed_value) > 1e-4
    assert replayed_value == pytest.approx(full_value, rel=1e-5, abs=1e-7)


def _two_pass_atp(model, graph, group):
    """The unbatched reference: a no-grad clean pass, then a corrupted pass with the gradient, full vocabulary."""
    from engine.attribution.atp import metric_rows, node_scores
    from engine.attribution.passes import PassRecord, instrumented, no_grad_pass

    _, clean = no_grad_pass(model, graph, causal_lm_forward, group.clean_ids)
    corrupt = PassRecord()
    with torch.enable_grad(), instrumented(model, graph, corrupt, grads=True):
        metric = metric_rows(causal_lm_forward(model, group.corrupt_ids), group)
        metric.sum().backward()
    return node_scores(graph, clean, corrupt, corrupt.grads, group.length), metric.detach()


def test_batched_pass_and_cut_unembedding_match_the_separate_passes():
    """AtP runs clean and corrupted rows in one pass and unembeds only the metric's two tokens; on a
    non-linear GQA model every score must match separate passes over the whole vocabulary."""
    from dataclasses import replace

    from tests.tiny_models import tiny_model

    loaded = tiny_model("llama")
    graph = graph_for(loaded)
    assert graph.unembed == "lm_head"
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 128, (2, 3, 6), generator=generator)
    group = PairGroup([0, 1, 2], ids[0], ids[1], torch.tensor([9, 5, 9]), torch.tensor([4, 9, 6]))
    expected, corrupt_metric = _two_pass_atp(loaded.model, graph, group)
    for cut in (graph, replace(graph, unembed=None)):
        report = Attributor(loaded.model, cut, causal_lm_forward, [group]).score("atp")
        for family in ("heads", "attn", "mlp", "resid"):
            got, want = getattr(report.scores, family), getattr(expected, family) / 3  # the report means over pairs
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-7), family
        assert report.corrupt_metric == pytest.approx(float(corrupt_metric.mean()), rel=1e-5)
    assert float(expected.heads.abs().max()) > 1e-3  # the heads really move the metric
    assert isinstance(loaded.model.lm_head, nn.Linear) and loaded.model.lm_head.out_features == 128  # restored
