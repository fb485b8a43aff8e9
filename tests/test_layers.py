"""Exact tests of the subgraph-model layers on hand-drawn graphs, plus gradchecks and a slow oracle."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cmcrec.models import layers
from cmcrec.models.layers import (
    EdgeScorer,
    RelationalGraph,
    RGCNConv,
    RGCNStack,
    _spmm,
    dropout_edges_undirected,
    gather_rows,
    info_nce,
    scorer_values,
)


def _set_identity(conv: RGCNConv, scales: list[float]) -> None:
    """W_r = scales[r] * I (one basis = I, comp[r] = scale), root = 0, bias = 0."""
    with torch.no_grad():
        conv.basis.zero_()
        conv.basis[0] = torch.eye(conv.in_channels)
        conv.comp.zero_()
        conv.comp[:, 0] = torch.tensor(scales)
        conv.root.zero_()
        conv.bias.zero_()


def _hand_graph():
    """5 nodes, 2 channels, 2 relations. Edges into node 0: relation 0 from nodes 1 and 2,
    relation 1 from node 3. Edge into node 4: relation 1 from node 0. W_0 = I, W_1 = 10 I."""
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    edge_index = torch.tensor([[1, 2, 3, 0], [0, 0, 0, 4]])
    edge_type = torch.tensor([0, 0, 1, 1])
    conv = RGCNConv(2, 2, num_relations=2, num_bases=1)
    _set_identity(conv, [1.0, 10.0])
    return x, edge_index, edge_type, conv


def test_rgcn_hand_example_mean_per_relation_and_edge_weight():
    x, edge_index, edge_type, conv = _hand_graph()
    out = conv(x, edge_index, edge_type)
    # node 0: mean over relation 0 of x1, x2 = (1, 2); relation 1: 10 * x3 = (10, 10)  -> (11, 12)
    # node 4: 10 * x0 = (10, 0); others receive nothing.
    expected = torch.tensor([[11.0, 12.0], [0, 0], [0, 0], [0, 0], [10.0, 0.0]])
    torch.testing.assert_close(out, expected)

    # Edge weights multiply messages; the mean still divides by the count (2), not by the weights.
    w = torch.tensor([3.0, 0.5, 2.0, 1.0])
    out = conv(x, edge_index, edge_type, w)
    # node 0: (3*x1 + 0.5*x2) / 2 = (3, 1); relation 1: 10 * 2 * x3 = (20, 20) -> (23, 21)
    expected = torch.tensor([[23.0, 21.0], [0, 0], [0, 0], [0, 0], [10.0, 0.0]])
    torch.testing.assert_close(out, expected)

    # Root weight and bias: root = 2 I, bias = (1, -1).
    with torch.no_grad():
        conv.root.copy_(2 * torch.eye(2))
        conv.bias.copy_(torch.tensor([1.0, -1.0]))
    out = conv(x, edge_index, edge_type)
    torch.testing.assert_close(out[1], torch.tensor([5.0, -1.0]))  # 2 * (2, 0) + (1, -1)
    torch.testing.assert_close(out[0], torch.tensor([11.0 + 2 + 1, 12.0 - 1]))


def test_rgcn_hand_example_mean_over_all_of_a_nodes_edges():
    # The hand graph with mean_over="node": node 0 divides every message by its 3 edges.
    x, edge_index, edge_type, conv = _hand_graph()
    graph = RelationalGraph.build(edge_index, edge_type, 5, 2, mean_over="node")
    out = conv(x, edge_index, edge_type, graph=graph)
    # node 0: (x1 + x2 + 10 * x3) / 3 = ((2, 4) + (10, 10)) / 3; node 4: 10 * x0 / 1.
    expected = torch.tensor([[4.0, 14.0 / 3], [0, 0], [0, 0], [0, 0], [10.0, 0.0]])
    torch.testing.assert_close(out, expected)
    # Two nodes with the same levels in different shares now differ; per relation they would not.
    edge_index = torch.tensor([[1, 2, 3, 1, 2, 3], [0, 0, 0, 4, 4, 4]])
    edge_type = torch.tensor([0, 0, 1, 0, 1, 1])
    ones = torch.ones(5, 2)
    graph = RelationalGraph.build(edge_index, edge_type, 5, 2, mean_over="node")
    by_node = conv(ones, edge_index, edge_type, graph=graph)
    by_relation = conv(ones, edge_index, edge_type)
    torch.testing.assert_close(by_relation[0], by_relation[4])
    torch.testing.assert_close(by_node[0], torch.tensor([4.0, 4.0]))  # (1 + 1 + 10) / 3
    torch.testing.assert_close(by_node[4], torch.tensor([7.0, 7.0]))  # (1 + 10 + 10) / 3
    with pytest.raises(ValueError, match="mean_over"):
        RelationalGraph.build(edge_index, edge_type, 5, 2, mean_over="sum")


def test_basis_decomposition_relation_weight():
    conv = RGCNConv(3, 2, num_relations=4, num_bases=2)
    w = conv.relation_weight()
    expected = torch.einsum("rb,bio->rio", conv.comp, conv.basis)
    torch.testing.assert_close(w, expected)
    assert repr(conv) == "RGCNConv(3, 2, num_relations=4, num_bases=2)"


def _slow_rgcn(conv: RGCNConv, x, edge_index, edge_type, edge_weight, mean_over="relation"):
    """Oracle: a loop over relations and edges, straight from the formula."""
    n = x.shape[0]
    w = conv.relation_weight()
    out = x @ conv.root + conv.bias
    rows = [out[i] for i in range(n)]
    for r in range(conv.num_relations):
        for i in range(n):
            sel = ((edge_index[1] == i) & (edge_type == r)).nonzero().flatten().tolist()
            if not sel:
                continue
            msg = sum(edge_weight[e] * (x[edge_index[0, e]] @ w[r]) for e in sel)
            count = len(sel) if mean_over == "relation" else int((edge_index[1] == i).sum())
            rows[i] = rows[i] + msg / count
    return torch.stack(rows)


@pytest.mark.parametrize("mean_over", ["relation", "node"])
@pytest.mark.parametrize("n", [12, 30_000])  # 30,000 * 3 slots > 2**16: the int32 sort path, else int16
def test_rgcn_matches_slow_loop_on_random_graph(n, mean_over):
    g = torch.Generator().manual_seed(0)
    r, e = 3, 50
    edge_index = torch.randint(0, n, (2, e), generator=g)
    edge_type = torch.randint(0, r, (e,), generator=g)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    w = torch.rand(e, generator=g, dtype=torch.float64)
    conv = RGCNConv(4, 3, r, 2).double()
    graph = RelationalGraph.build(edge_index, edge_type, n, r, mean_over=mean_over)
    slow = _slow_rgcn(conv, x, edge_index, edge_type, w, mean_over)
    torch.testing.assert_close(conv(x, edge_index, edge_type, w, graph=graph), slow)
    ones = torch.ones(e, dtype=torch.float64)
    slow = _slow_rgcn(conv, x, edge_index, edge_type, ones, mean_over)
    torch.testing.assert_close(conv(x, edge_index, edge_type, graph=graph), slow)


def test_sparse_product_never_reads_its_output_buffer():
    """``_spmm`` relies on ``addmm(beta=0)`` ignoring the buffer it writes into, NaNs and empty rows included."""
    crow = torch.tensor([0, 2, 2, 3])  # row 1 has no nonzeros
    a = torch.sparse_csr_tensor(
        crow, torch.tensor([0, 2, 1]), torch.tensor([1.0, 2.0, 3.0]), (3, 3), check_invariants=True
    )
    x = torch.arange(6.0).view(3, 2)
    out = torch.full((3, 2), float("nan"))
    torch.addmm(out, a, x, beta=0.0, out=out)
    torch.testing.assert_close(out, a.to_dense() @ x)
    torch.testing.assert_close(_spmm(a, x), a.to_dense() @ x)


def test_rgcn_gradcheck_x_and_edge_weight():
    g = torch.Generator().manual_seed(1)
    n, r, e = 8, 3, 30
    edge_index = torch.randint(0, n, (2, e), generator=g)
    edge_type = torch.randint(0, r, (e,), generator=g)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.rand(e, generator=g, dtype=torch.float64).requires_grad_()
    conv = RGCNConv(3, 2, r, 2).double()
    assert torch.autograd.gradcheck(lambda x, w: conv(x, edge_index, edge_type, w), (x, w))
    graph = RelationalGraph.build(edge_index, edge_type, n, r)
    assert torch.autograd.gradcheck(lambda x: gather_rows(x, graph, "src"), (x,))
    assert torch.autograd.gradcheck(lambda x: gather_rows(x, graph, "dst"), (x,))


def test_edge_scorer_is_mlp_on_concatenation_and_rescales_per_graph():
    torch.manual_seed(0)
    scorer = EdgeScorer(3, 4).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 3], [1, 0, 0, 4, 5, 3, 5]])
    node_graph = torch.tensor([0, 0, 0, 1, 1, 1])
    # Raw score equals an MLP on [h_src ‖ h_dst].
    w1 = torch.cat([scorer.lin_src.weight, scorer.lin_dst.weight], dim=1)  # (H, 2C)
    cat = torch.cat([x[edge_index[0]], x[edge_index[1]]], dim=1)
    hidden = torch.relu(cat @ w1.T + scorer.lin_src.bias)
    expected = torch.sigmoid(scorer.lin_out(hidden).squeeze(-1))
    raw = scorer.score(x, edge_index)
    torch.testing.assert_close(raw, expected)
    assert bool(((raw > 0) & (raw < 1)).all())
    # Rescaled: mean 1 within each graph; the ratio of two edges of a graph is kept.
    w = scorer(x, edge_index, node_graph, 2)
    torch.testing.assert_close(w[:3].mean(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(w[3:].mean(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(w[0] / w[1], raw[0] / raw[1])
    graph = RelationalGraph.build(edge_index, torch.zeros(7, dtype=torch.long), 6, 1)
    torch.testing.assert_close(scorer(x, edge_index, node_graph, 2, graph), w)
    xg = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: scorer(x, edge_index, node_graph, 2, graph), (xg,))
    assert repr(scorer) == "EdgeScorer(3, hidden=4)"


def test_linear_edge_scorer_is_sigmoid_of_endpoint_sums():
    torch.manual_seed(0)
    scorer = EdgeScorer(3, 0).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 3], [1, 0, 0, 4, 5, 3, 5]])
    node_graph = torch.tensor([0, 0, 0, 1, 1, 1])
    a = x @ scorer.lin_src.weight.view(-1) + scorer.lin_src.bias
    b = x @ scorer.lin_dst.weight.view(-1)
    expected = torch.sigmoid(a[edge_index[0]] + b[edge_index[1]])
    torch.testing.assert_close(scorer.score(x, edge_index), expected)
    graph = RelationalGraph.build(edge_index, torch.zeros(7, dtype=torch.long), 6, 1)
    torch.testing.assert_close(scorer.score(x, edge_index, graph), expected)
    w = scorer(x, edge_index, node_graph, 2, graph)
    torch.testing.assert_close(w, scorer(x, edge_index, node_graph, 2))
    torch.testing.assert_close(w[:3].mean(), torch.tensor(1.0, dtype=torch.float64))
    xg = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: scorer(x, edge_index, node_graph, 2, graph), (xg,))
    assert sum(p.numel() for p in scorer.parameters()) == 3 + 1 + 3


def test_info_nce_hand_value_and_gradcheck():
    # Identical orthonormal views: S = I / τ, so each row's loss is log(1 + (B-1) e^{-1/τ}).
    b, tau = 4, 0.5
    a = torch.eye(b, dtype=torch.float64)
    expected = math.log(1 + (b - 1) * math.exp(-1 / tau))
    assert info_nce(a, a.clone(), tau).item() == pytest.approx(expected, rel=1e-12)
    # Scale does not matter (cosine similarity).
    assert info_nce(3 * a, a, tau).item() == pytest.approx(expected, rel=1e-12)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: info_nce(x, y, 0.3), (x, y))


def _info_nce_loop(a, b, tau, ids):
    """One anchor at a time, negatives listed explicitly: the obvious reading of the masked loss."""
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        for x, y in ((a, b), (b, a)):  # both directions: view 1 anchors, then view 2
            keep = [j for j in range(n) if j == i or ids[j] != ids[i]]
            logits = torch.stack([x[i] @ y[j] / tau for j in keep])
            total = total - torch.log_softmax(logits, 0)[keep.index(i)]
    return total / (2 * n)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 7), groups=st.integers(1, 7), seed=st.integers(0, 2**31 - 1))
def test_info_nce_leaves_repeated_targets_out_of_the_negatives(n, groups, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 3, generator=g, dtype=torch.float64)
    b = torch.randn(n, 3, generator=g, dtype=torch.float64)
    ids = torch.randint(0, groups, (n,), generator=g)
    assert info_nce(a, b, 0.3, ids).item() == pytest.approx(_info_nce_loop(a, b, 0.3, ids).item(), rel=1e-10)
    # All distinct: the same as no ids.
    distinct = torch.arange(n)
    assert info_nce(a, b, 0.3, distinct).item() == pytest.approx(info_nce(a, b, 0.3).item(), rel=1e-12)


def test_info_nce_masked_gradcheck_and_all_repeats():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 1, 0, 2, 1])
    assert torch.autograd.gradcheck(lambda x, y: info_nce(x, y, 0.3, ids), (x, y))
    # One target repeated everywhere: no negatives left, each row's loss is log(1) = 0.
    assert info_nce(x, y, 0.3, torch.zeros(5, dtype=torch.long)).item() == 0.0


def test_undirected_dropout():
    edge_index = torch.tensor([[0, 1, 0, 2, 3, 4], [1, 0, 2, 0, 4, 3]])
    edge_type = torch.tensor([1, 1, 2, 2, 0, 0])
    torch.manual_seed(3)
    ei, et = dropout_edges_undirected(edge_index, 0.5, edge_type)
    pairs = {(int(s), int(d), int(t)) for s, d, t in zip(ei[0], ei[1], et, strict=True)}
    assert all((d, s, t) in pairs for s, d, t in pairs)  # both directions kept together, type kept
    assert pairs <= {(int(s), int(d), int(t)) for s, d, t in zip(edge_index[0], edge_index[1], edge_type, strict=True)}
    ei, et = dropout_edges_undirected(edge_index, 0.0, edge_type)
    assert ei.shape[1] == 6


def _paired_graph(n: int, r: int, pairs: int, seed: int):
    """A random graph in the extract_subgraphs layout: edge e + E/2 is edge e reversed, same type."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (pairs,), generator=g)
    dst = torch.randint(0, n, (pairs,), generator=g)
    typ = torch.randint(0, r, (pairs,), generator=g)
    return torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]), torch.cat([typ, typ])


def test_paired_build_matches_general_build_and_checks_layout():
    n, r = 9, 3
    edge_index, edge_type = _paired_graph(n, r, 20, 0)
    paired = RelationalGraph.build(edge_index, edge_type, n, r, paired=True)
    general = RelationalGraph.build(edge_index, edge_type, n, r)
    torch.testing.assert_close(paired.norm, general.norm)
    x = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(40, dtype=torch.float64, requires_grad=True)
    conv = RGCNConv(4, 3, r, 2).double()
    torch.testing.assert_close(
        conv(x, edge_index, edge_type, w, graph=paired), conv(x, edge_index, edge_type, w, graph=general)
    )
    assert torch.autograd.gradcheck(lambda x, w: conv(x, edge_index, edge_type, w, graph=paired), (x, w))
    assert torch.autograd.gradcheck(lambda x: gather_rows(x, paired, "src"), (x,))
    with pytest.raises(ValueError, match="reversed"):
        RelationalGraph.build(edge_index[:, 1:], edge_type[1:], n, r, paired=True)


@pytest.mark.parametrize("paired", [False, True])
def test_build_operators_against_their_definitions(paired):
    n, r = 11, 4
    edge_index, edge_type = _paired_graph(n, r, 35, 3)
    g = RelationalGraph.build(edge_index, edge_type, n, r, paired=paired)
    src, dst = edge_index
    key = dst * r + edge_type
    order = sorted(range(70), key=lambda e: (int(key[e]), e))  # stable sort by key
    assert g.key_perm.tolist() == order
    assert g.key_sorted.tolist() == key[order].tolist()
    assert g.key_col.tolist() == src[order].tolist()
    assert g.dst_sorted.tolist() == dst[order].tolist()
    counts = torch.bincount(key, minlength=n * r)
    assert g.key_crow.tolist() == [0, *torch.cumsum(counts, 0).tolist()]
    assert torch.equal(g.norm_sorted, 1.0 / counts[key[order]].float())
    degree = torch.bincount(dst, minlength=n)
    by_node = RelationalGraph.build(edge_index, edge_type, n, r, paired=paired, mean_over="node")
    assert torch.equal(by_node.norm_sorted, 1.0 / degree[dst[order]].float())
    # A^T: nonzeros grouped by source, each naming its key and the key-order position it mirrors.
    by_src = g.src_perm.tolist()
    assert sorted(by_src) == list(range(70)) and src[by_src].tolist() == sorted(src.tolist())
    assert g.src_col.tolist() == key[by_src].tolist()
    assert g.key_perm[g.t_perm.long()].tolist() == by_src
    assert g.src_crow.tolist() == [0, *torch.cumsum(torch.bincount(src, minlength=n), 0).tolist()]
    if paired:
        assert g.key_half.tolist() == [e % 35 for e in order]


@pytest.mark.parametrize("mean_over", ["relation", "node"])
def test_dropout_on_values_equals_removing_the_edges(mean_over):
    n, r = 10, 3
    edge_index, edge_type = _paired_graph(n, r, 30, 1)
    graph = RelationalGraph.build(edge_index, edge_type, n, r, paired=True, mean_over=mean_over)
    dropped = graph.dropout_undirected(0.4, generator=torch.Generator().manual_seed(5))
    kept_sorted = dropped.norm_sorted > 0
    kept = torch.zeros(60, dtype=torch.bool).index_put((graph.key_perm,), kept_sorted)
    assert torch.equal(kept[:30], kept[30:])  # both directions together
    assert 0 < int(kept.sum()) < 60
    conv = RGCNConv(4, 3, r, 2).double()
    x = torch.randn(n, 4, dtype=torch.float64)
    value = dropped.norm_sorted.double()
    kept_graph = RelationalGraph.build(edge_index[:, kept], edge_type[kept], n, r, mean_over=mean_over)
    removed = conv(x, edge_index[:, kept], edge_type[kept], graph=kept_graph)
    torch.testing.assert_close(conv.propagate(x, value, dropped), removed)


@pytest.mark.parametrize("per_rating", [False, True])
@pytest.mark.parametrize("scorer_hidden", [3, 0])
def test_stack_on_target_nodes_equals_rows_of_full_computation(scorer_hidden, per_rating):
    n, r = 12, 3
    edge_index, edge_type = _paired_graph(n, r, 40, 2)
    graph = RelationalGraph.build(edge_index, edge_type, n, r, paired=True)
    node_graph = torch.tensor([0] * 6 + [1] * 6)
    torch.manual_seed(0)
    stack = RGCNStack(4, 5, 3, r, 2, scorer_hidden=scorer_hidden, scorer_per_rating=per_rating).double()
    x = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
    nodes = torch.tensor([0, 7, 3, 11])
    full = stack(x, edge_index, edge_type, graph, node_graph, 2)
    torch.testing.assert_close(stack(x, edge_index, edge_type, graph, node_graph, 2, nodes=nodes), full[nodes])
    assert torch.autograd.gradcheck(lambda x: stack(x, edge_index, edge_type, graph, node_graph, 2, nodes=nodes), (x,))
    # The edge-scorer path through the sorted operator matches the edge-order formula.
    scorer = stack.scorers[0]
    h = torch.randn(n, 5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(scorer.score(h, edge_index, graph), scorer.score(h, edge_index))
    assert torch.autograd.gradcheck(lambda h: scorer.score(h, edge_index, graph), (h,))


@pytest.mark.parametrize("hidden", [4, 0])
def test_per_rating_scorer_scores_each_rating_once_for_both_directions(hidden):
    """Hand formula: s_e = σ(MLP([h_first ‖ h_second])) of rating e (its first-half orientation),
    the same for edge e and its reverse e + E/2; the sorted-operator path, its rescaling
    and its gradient (CSR scatters built from the key order) agree with the slow formula."""
    n, r, pairs = 10, 3, 25
    edge_index, edge_type = _paired_graph(5, r, pairs, 7)
    # Two subgraphs of 5 nodes each: ratings never cross a subgraph (as in a batch).
    edge_index = edge_index + 5 * (torch.arange(2 * pairs) % pairs >= 12)
    graph = RelationalGraph.build(edge_index, edge_type, n, r, paired=True)
    node_graph = torch.tensor([0] * 5 + [1] * 5)
    torch.manual_seed(1)
    scorer = EdgeScorer(3, hidden, per_rating=True).double()
    x = torch.randn(n, 3, dtype=torch.float64)
    first, second = edge_index[0, :pairs], edge_index[1, :pairs]
    a, b = scorer.lin_src(x)[first], scorer.lin_dst(x)[second]
    rating = (
        torch.sigmoid((a + b).squeeze(-1))
        if hidden == 0
        else torch.sigmoid(scorer.lin_out(torch.relu(a + b)).squeeze(-1))
    )
    expected = torch.cat([rating, rating])
    torch.testing.assert_close(scorer.score(x, edge_index), expected)
    torch.testing.assert_close(scorer.score(x, edge_index, graph), expected)
    w = scorer(x, edge_index, node_graph, 2, graph)
    torch.testing.assert_close(w, scorer(x, edge_index, node_graph, 2))
    torch.testing.assert_close(w[:pairs], w[pairs:])
    edge_graph = node_graph[edge_index[0]]
    for g in (0, 1):
        torch.testing.assert_close(w[edge_graph == g].mean(), torch.tensor(1.0, dtype=torch.float64))
    xg = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: scorer(x, edge_index, node_graph, 2, graph), (xg,))
    # The weights the stack feeds its operator, in key order, are the rating weights read per position.
    rows = graph.scorer_rows(per_rating=True)
    count = torch.bincount(node_graph[rows.dst], minlength=2).double()
    key_w = scorer.weights_rows(x, graph, node_graph[rows.dst], count).index_select(0, rows.to_key)
    torch.testing.assert_close(key_w, w[graph.key_perm])
    assert repr(scorer) == f"EdgeScorer(3, hidden={hidden}, per_rating=True)"


@pytest.mark.parametrize("sorted_src", [False, True])
@pytest.mark.parametrize("per_rating", [False, True])
@pytest.mark.parametrize("hidden", [4, 0])
def test_scorer_parameter_gradients_match_the_plain_autograd_path(per_rating, hidden, sorted_src):
    """The custom Functions (fused gather, factored backward, key-order read) give the same
    parameter and input gradients as plain indexing, which autograd differentiates itself;
    with ratings grouped by source (the extract_subgraphs layout: no source sort) or not."""
    n, r, pairs = 10, 3, 25
    edge_index, edge_type = _paired_graph(5, r, pairs, 8)
    edge_index = edge_index + 5 * (torch.arange(2 * pairs) % pairs >= 12)
    if sorted_src:
        order = torch.argsort(edge_index[0, :pairs], stable=True)
        order = torch.cat([order, order + pairs])
        edge_index, edge_type = edge_index[:, order], edge_type[order]
        assert bool((edge_index[0, 1:pairs] >= edge_index[0, : pairs - 1]).all())
    graph = RelationalGraph.build(edge_index, edge_type, n, r, paired=True)
    node_graph = torch.tensor([0] * 5 + [1] * 5)
    torch.manual_seed(2)
    scorer = EdgeScorer(3, hidden, per_rating=per_rating).double()
    x = torch.randn(n, 3, dtype=torch.float64)
    probe = torch.randn(2 * pairs, dtype=torch.float64)
    grads = []
    for g in (graph, None):
        xg = x.clone().requires_grad_()
        scorer.zero_grad()
        (scorer(xg, edge_index, node_graph, 2, g) * probe).sum().backward()
        grads.append([xg.grad, *(p.grad.clone() for p in scorer.parameters())])
    for fast, slow in zip(*grads, strict=True):
        torch.testing.assert_close(fast, slow)
    # The values a stack's next layer reads: norm times the rescaled weight of each key position.
    rows = graph.scorer_rows(per_rating)
    row_graph = node_graph[rows.dst]
    count = torch.bincount(row_graph, minlength=2).double()
    s = torch.rand(rows.src.numel(), dtype=torch.float64, requires_grad=True)
    norm = graph.norm_sorted.double()
    w = scorer.weights_rows(x, graph, row_graph, count)  # plain autograd
    s_x = scorer.score_rows(x, graph)
    expected = norm * (w if rows.to_key is None else w[rows.to_key])
    torch.testing.assert_close(scorer_values(s_x, norm, rows, row_graph, count), expected)
    assert torch.autograd.gradcheck(lambda s: scorer_values(s, norm, rows, row_graph, count), (s,))
    # These rows come in subgraph order, so they may pass their run lengths (segment sums instead of
    # index_add_): the same values and gradient.
    assert bool((row_graph[1:] >= row_graph[:-1]).all())
    runs = torch.bincount(row_graph, minlength=2)
    torch.testing.assert_close(scorer_values(s_x, norm, rows, row_graph, count, runs), expected)
    assert torch.autograd.gradcheck(lambda s: scorer_values(s, norm, rows, row_graph, count, runs), (s,))


def test_transposed_values_are_remembered_per_tensor_and_version():
    n, r = 8, 3
    edge_index, edge_type = _paired_graph(n, r, 20, 4)
    graph = RelationalGraph.build(edge_index, edge_type, n, r, paired=True)
    value = torch.rand(40)
    first = graph.transposed_values(value)
    assert torch.equal(first, value[graph.t_perm.long()])
    assert graph.transposed_values(value) is first  # the same tensor, unchanged: reused
    value.mul_(2.0)  # changed in place: recomputed
    assert torch.equal(graph.transposed_values(value), value[graph.t_perm.long()])
    other = torch.rand(40)
    dropped = graph.dropout_undirected(0.5)  # shares the cache: still keyed by the tensor itself
    assert torch.equal(dropped.transposed_values(other), other[graph.t_perm.long()])
    assert torch.equal(graph.transposed_values(value), value[graph.t_perm.long()])


def test_per_rating_scorer_needs_the_paired_layout():
    scorer = EdgeScorer(3, 2, per_rating=True)
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    x = torch.randn(3, 3)
    with pytest.raises(ValueError, match="reversed"):
        scorer.score(x, edge_index)
    graph = RelationalGraph.build(edge_index, torch.zeros(3, dtype=torch.long), 3, 1)
    with pytest.raises(ValueError, match="paired=True"):
        scorer.score(x, edge_index, graph)


def test_cpu_math_is_warmed_up_once_per_thread_count_before_the_first_sparse_product(monkeypatch):
    """MKL's vector math (tanh, exp, ...) is called once on one thread and once on every thread
    before the first CSR operator is built (see warm_cpu_math), and not again after."""
    calls = []
    monkeypatch.setattr(layers, "_MKL_VML_OPS", (lambda t: calls.append(t.numel()),))
    monkeypatch.setattr(layers, "_vml_warm", set())
    crow, col = torch.tensor([0, 1, 2]), torch.tensor([1, 0])
    layers._csr(crow, col, torch.ones(2), (2, 2))
    threads = torch.get_num_threads()
    assert calls == [8, 2 * 32768 * threads]
    layers._csr(crow, col, torch.ones(2), (2, 2))
    assert len(calls) == 2
