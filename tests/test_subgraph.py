"""Enclosing-subgraph extraction: exact answers on a hand-drawn graph, and the
fast vectorised code checked against the slow oracle in ``subgraph_oracle``."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from subgraph_oracle import DictGraph, oracle_batch
from subgraph_oracle import node_hash as oracle_hash

import cmcrec.graph.subgraph as subgraph_module
from cmcrec.data.ratings import Ratings, RatingScale, Vocabulary
from cmcrec.graph import RatingGraph, extract_subgraphs, extract_subgraphs_with_nodes, node_hash


def as_lists(batch, node_index) -> dict:
    return {
        "node_label": batch.node_label.tolist(),
        "node_index": node_index.tolist(),
        "node_graph": batch.node_graph.tolist(),
        "edge_index": batch.edge_index.tolist(),
        "edge_type": batch.edge_type.tolist(),
        "edge_value": batch.edge_value.tolist(),
        "user_pos": batch.user_pos.tolist(),
        "item_pos": batch.item_pos.tolist(),
    }


# ----------------------------------------------------------------- hand-drawn
#
#   u0 --5-- i0 --4-- u1          u3 (no ratings)
#    \              /             i2 (no ratings)
#     3-- i1 --2---
#          |
#          1
#          |
#          u2
#
# Stars 1..5 → types 0..4, values (r - 1) / 4.
HAND = [(0, 0, 5), (0, 1, 3), (1, 0, 4), (1, 1, 2), (2, 1, 1)]


@pytest.fixture
def hand() -> RatingGraph:
    u, i, r = (np.array(c) for c in zip(*HAND, strict=True))
    return RatingGraph.from_arrays(u, i, r - 1, (r - 1) / 4, num_users=4, num_items=3, num_relations=5)


def test_hand_graph_one_hop(hand):
    # Target (u0, i0) is a training rating: it must vanish; the neighbour-
    # neighbour rating u1–i1 must be there. Target (u2, i0) is not a rating.
    batch = extract_subgraphs(hand, np.array([0, 2]), np.array([0, 0]), max_nodes_per_hop=None, y=[5.0, 2.0])
    # graph 0: 0=u0 1=i0 2=u1 3=i1 | graph 1: 4=u2 5=i0 6=u0 7=u1 8=i1
    assert batch.node_label.tolist() == [0, 1, 2, 3, 0, 1, 2, 2, 3]
    assert batch.node_graph.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert batch.user_pos.tolist() == [0, 4]
    assert batch.item_pos.tolist() == [1, 5]
    src = [0, 2, 2, 4, 6, 6, 7, 7]  # users
    dst = [3, 1, 3, 8, 5, 8, 5, 8]  # items
    assert batch.edge_index.tolist() == [src + dst, dst + src]
    assert batch.edge_type.tolist() == [2, 3, 1, 0, 4, 2, 3, 1] * 2
    assert batch.edge_value.tolist() == [0.5, 0.75, 0.25, 0.0, 1.0, 0.5, 0.75, 0.25] * 2
    assert batch.y.tolist() == [5.0, 2.0]
    assert batch.num_labels == 4
    assert batch.x.shape == (9, 4)


def test_hand_graph_two_hops(hand):
    batch, node_index = extract_subgraphs_with_nodes(hand, np.array([0]), np.array([0]), max_nodes_per_hop=None, hops=2)
    # 0=u0 1=i0 2=u1 3=i1 4=u2 (hop 2, reached through i1); no hop-2 item
    assert batch.node_label.tolist() == [0, 1, 2, 3, 4]
    assert node_index.tolist() == [0, 0, 1, 1, 2]
    src, dst = [0, 2, 2, 4], [3, 1, 3, 3]
    assert batch.edge_index.tolist() == [src + dst, dst + src]
    assert batch.edge_type.tolist() == [2, 3, 1, 0] * 2
    assert batch.num_labels == 6
    assert np.isnan(batch.y.numpy()).all()


def test_hand_graph_cold_targets(hand):
    # u3 and i2 have no ratings: the pair (u3, i2) is two isolated nodes;
    # (u3, i0) still sees the users who rated i0.
    batch, node_index = extract_subgraphs_with_nodes(hand, np.array([3, 3]), np.array([2, 0]), max_nodes_per_hop=None)
    assert batch.node_label.tolist() == [0, 1, 0, 1, 2, 2]
    assert node_index.tolist() == [3, 2, 3, 0, 0, 1]
    assert batch.edge_index.tolist() == [[4, 5, 3, 3], [3, 3, 4, 5]]
    assert batch.edge_type.tolist() == [4, 3, 4, 3]


def test_hand_graph_cap_is_deterministic_hash(hand):
    # (u2, i0) has two hop-1 user candidates, u0 and u1: a cap of 1 keeps the
    # one with the smaller hash, whatever else is in the batch.
    keep = min((0, 1), key=lambda n: (oracle_hash(2, 0, n), n))
    alone, idx_alone = extract_subgraphs_with_nodes(hand, [2], [0], max_nodes_per_hop=1)
    mixed, idx_mixed = extract_subgraphs_with_nodes(hand, [0, 2, 1], [1, 0, 1], max_nodes_per_hop=1)
    assert idx_alone.tolist() == [2, 0, keep, 1]
    first = int(mixed.user_pos[1])
    assert idx_mixed[first : first + 4].tolist() == idx_alone.tolist()


def test_hash_matches_python_reference():
    rng = np.random.default_rng(0)
    u, i, n = (rng.integers(0, 2**40, 50) for _ in range(3))
    fast = node_hash(u, i, n)
    assert fast.dtype == np.uint64
    assert [int(h) for h in fast] == [oracle_hash(int(a), int(b), int(c)) for a, b, c in zip(u, i, n, strict=True)]


def test_empty_batch(hand):
    batch = extract_subgraphs(hand, np.zeros(0, np.int64), np.zeros(0, np.int64), max_nodes_per_hop=2, hops=2)
    assert batch.num_targets == 0 and batch.num_nodes == 0 and batch.num_edges == 0
    assert tuple(batch.edge_index.shape) == (2, 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"users": [0, 1], "items": [0]}, "differ in length"),
        ({"users": [4], "items": [0]}, "target user index 4"),
        ({"users": [0], "items": [-1]}, "target item index -1"),
        ({"users": [0.5], "items": [0]}, "integer"),
        ({"max_nodes_per_hop": 0}, "max_nodes_per_hop"),
        ({"max_nodes_per_hop": 2.5}, "max_nodes_per_hop"),
        ({"hops": 0}, "hops"),
        ({"y": [1.0, 2.0]}, "y has shape"),
    ],
)
def test_invalid_input(hand, kwargs, message):
    args = {"users": [0], "items": [0], "max_nodes_per_hop": None} | kwargs
    with pytest.raises(ValueError, match=message):
        extract_subgraphs(hand, args.pop("users"), args.pop("items"), **args)


# ------------------------------------------------------------------- graph
def test_from_ratings_matches_from_arrays():
    users, items = Vocabulary(["a", "b", "c"], "user"), Vocabulary(["x", "y"], "item")
    scale = RatingScale.from_range(0.5, 5.0, 0.5)
    ratings = Ratings(np.array([2, 0, 0]), np.array([1, 1, 0]), np.array([5.0, 0.5, 3.5]), users, items, scale)
    g = RatingGraph.from_ratings(ratings)
    assert (g.num_users, g.num_items, g.num_relations, g.num_edges) == (3, 2, 10, 3)
    assert g.user_indptr.tolist() == [0, 2, 2, 3]
    assert g.user_items.tolist() == [0, 1, 1]
    assert g.user_types.tolist() == [6, 0, 9]
    assert g.user_values.tolist() == pytest.approx([3 / 4.5, 0.0, 1.0])
    assert g.item_indptr.tolist() == [0, 1, 3]
    assert g.item_users.tolist() == [0, 0, 2]
    assert g.item_types.tolist() == [6, 0, 9]
    assert g.edge_position(np.array([0, 2, 1]), np.array([1, 1, 0])).tolist() == [1, 2, -1]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"user": [0, 0]}, "more than once"),
        ({"item": [0, 3]}, "item index 3"),
        ({"edge_type": [0, 5]}, "edge type 5"),
        ({"edge_value": [0.0, 1.5]}, r"outside \[0, 1\]"),
        ({"edge_value": [0.0]}, "differ in length"),
    ],
)
def test_from_arrays_rejects(change, message):
    args = {"user": [0, 0], "item": [0, 1], "edge_type": [0, 1], "edge_value": [0.0, 0.25]}
    if change.get("user") == [0, 0]:
        args["item"] = [1, 1]
    args |= {k: v for k, v in change.items() if k != "user"}
    with pytest.raises(ValueError, match=message):
        RatingGraph.from_arrays(**args, num_users=2, num_items=3, num_relations=5)


def test_with_new_user(hand):
    g, new = hand.with_new_user(np.array([1, 0]), np.array([4, 0]), np.array([1.0, 0.0]))
    assert new == 4 and g.num_users == 5 and hand.num_users == 4
    u, i, r = (np.array(c) for c in zip(*HAND, strict=True))
    rebuilt = RatingGraph.from_arrays(
        np.append(u, [4, 4]),
        np.append(i, [1, 0]),
        np.append(r - 1, [4, 0]),
        np.append((r - 1) / 4, [1.0, 0.0]),
        5,
        3,
        5,
    )
    for name in ("user_indptr", "user_items", "user_types", "user_values"):
        assert np.array_equal(getattr(g, name), getattr(rebuilt, name)), name
    for name in ("item_indptr", "item_users", "item_types", "item_values"):
        assert np.array_equal(getattr(g, name), getattr(rebuilt, name)), name
    # The new user's subgraph is available at once, without retraining.
    batch, node_index = extract_subgraphs_with_nodes(g, [new], [0], max_nodes_per_hop=None)
    assert node_index.tolist() == [4, 0, 0, 1, 1]  # new user, i0, users u0 u1, item i1
    assert (batch.edge_index[1][batch.edge_index[0] == 0]).tolist() == [4]  # only new user → i1
    g0, new0 = hand.with_new_user([], [], [])
    assert new0 == 4 and g0.num_edges == hand.num_edges and g0.user_degree()[4] == 0
    with pytest.raises(ValueError, match="twice"):
        hand.with_new_user([1, 1], [0, 0], [0.0, 0.0])
    with pytest.raises(ValueError, match="item index 3"):
        hand.with_new_user([3], [0], [0.0])


# ----------------------------------------------------------- against oracle
@st.composite
def graphs_and_targets(draw):
    num_users = draw(st.integers(1, 7))
    num_items = draw(st.integers(1, 7))
    num_relations = draw(st.integers(1, 3))
    pairs = draw(
        st.lists(
            st.tuples(st.integers(0, num_users - 1), st.integers(0, num_items - 1)),
            unique=True,
            max_size=num_users * num_items,
        )
    )
    types = draw(st.lists(st.integers(0, num_relations - 1), min_size=len(pairs), max_size=len(pairs)))
    user = np.array([p[0] for p in pairs], dtype=np.int64)
    item = np.array([p[1] for p in pairs], dtype=np.int64)
    edge_type = np.array(types, dtype=np.int64)
    graph = RatingGraph.from_arrays(
        user, item, edge_type, edge_type / max(num_relations - 1, 1), num_users, num_items, num_relations
    )
    # Targets: some training ratings, some arbitrary pairs (unrated, cold).
    from_edges = draw(st.lists(st.sampled_from(pairs), max_size=4)) if pairs else []
    anywhere = draw(st.lists(st.tuples(st.integers(0, num_users - 1), st.integers(0, num_items - 1)), max_size=4))
    targets = draw(st.permutations(from_edges + anywhere))
    users = np.array([t[0] for t in targets], dtype=np.int64)
    items = np.array([t[1] for t in targets], dtype=np.int64)
    return graph, users, items


extraction_settings = settings(max_examples=300, deadline=None)


@extraction_settings
@given(
    data=graphs_and_targets(),
    hops=st.sampled_from([1, 2]),
    cap=st.sampled_from([None, 1, 2, 3]),
    dense=st.booleans(),
    torch_scan=st.booleans(),
)
def test_deterministic_equals_oracle(data, hops, cap, dense, torch_scan):
    graph, users, items = data
    saved, saved_scan = subgraph_module._DENSE_LOOKUP_MAX, subgraph_module._scan_kernels
    subgraph_module._DENSE_LOOKUP_MAX = saved if dense else 0  # also test the binary-search path
    if torch_scan:  # the ratings scan without the compiled kernel (where it is built, it runs otherwise)
        subgraph_module._scan_kernels = lambda: None
    try:
        batch, node_index = extract_subgraphs_with_nodes(graph, users, items, max_nodes_per_hop=cap, hops=hops)
    finally:
        subgraph_module._DENSE_LOOKUP_MAX, subgraph_module._scan_kernels = saved, saved_scan
    expected = oracle_batch(DictGraph.from_rating_graph(graph), users, items, hops, cap)
    assert as_lists(batch, node_index) == expected
    assert batch.num_labels == 2 * (hops + 1)
    # Deterministic sampling does not depend on the rest of the batch.
    if len(users) > 1:
        b1, n1 = extract_subgraphs_with_nodes(graph, users[1:2], items[1:2], max_nodes_per_hop=cap, hops=hops)
        mask = (batch.node_graph == 1).numpy()
        assert node_index[mask].tolist() == n1.tolist()


@extraction_settings
@given(data=graphs_and_targets(), hops=st.sampled_from([1, 2]), cap=st.sampled_from([1, 2, 3]), seed=st.integers(0, 99))
def test_random_sampling_invariants(data, hops, cap, seed):
    graph, users, items = data
    batch, node_index = extract_subgraphs_with_nodes(
        graph, users, items, max_nodes_per_hop=cap, hops=hops, rng=np.random.default_rng(seed)
    )
    again, again_index = extract_subgraphs_with_nodes(
        graph, users, items, max_nodes_per_hop=cap, hops=hops, rng=np.random.default_rng(seed)
    )
    assert as_lists(again, again_index) == as_lists(batch, node_index)  # reproducible

    label, owner = batch.node_label.numpy(), batch.node_graph.numpy()
    chosen = {(int(g), int(lb), int(n)) for g, lb, n in zip(owner, label, node_index, strict=True)}
    full, full_index = extract_subgraphs_with_nodes(graph, users, items, max_nodes_per_hop=None, hops=hops)
    uncapped = {
        (int(g), int(lb), int(n))
        for g, lb, n in zip(full.node_graph.numpy(), full.node_label.numpy(), full_index, strict=True)
    }
    assert chosen <= uncapped  # same node, same label

    def replay(g, kind, hop, u, i, candidates, k):
        label = 2 * hop + (kind == "item")
        picked = {n for gg, lb, n in chosen if gg == g and lb == label}
        assert picked <= candidates and len(picked) == k  # a cap-sized subset of this hop's candidates
        return picked

    # Given the chosen nodes, layout and edges are exactly the oracle's
    # (induced ratings in both directions, target rating absent).
    expected = oracle_batch(DictGraph.from_rating_graph(graph), users, items, hops, cap, choose=replay)
    assert as_lists(batch, node_index) == expected


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build the kernels with")
@settings(max_examples=100, deadline=None)
@given(
    data=graphs_and_targets(), hops=st.sampled_from([1, 2]), cap=st.sampled_from([None, 1, 3]), seed=st.integers(0, 9)
)
def test_ratings_scan_kernel_equals_pytorch_path(data, hops, cap, seed):
    """The compiled ratings scan and the PyTorch one give the same batch, tensor for tensor and dtype for
    dtype, sampled (training) and deterministic (evaluation)."""
    from cmcrec.models.kernels import cpu_kernels

    assert cpu_kernels() is not None
    graph, users, items = data

    def both(rng_seed):
        out = []
        for scan in (subgraph_module._scan_kernels, lambda: None):
            rng = None if rng_seed is None else np.random.default_rng(rng_seed)
            saved = subgraph_module._scan_kernels
            subgraph_module._scan_kernels = scan
            try:
                out.append(extract_subgraphs(graph, users, items, max_nodes_per_hop=cap, hops=hops, rng=rng))
            finally:
                subgraph_module._scan_kernels = saved
        return out

    for fused, reference in (both(None), both(seed)):
        for name in ("node_label", "edge_index", "edge_type", "edge_value", "node_graph", "user_pos", "item_pos"):
            a, b = getattr(fused, name), getattr(reference, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name


@settings(max_examples=60, deadline=None)
@given(data=graphs_and_targets(), new_items=st.lists(st.integers(0, 6), unique=True, max_size=4))
def test_with_new_user_equals_rebuild(data, new_items):
    graph, _, _ = data
    new_items = np.array([i for i in new_items if i < graph.num_items], dtype=np.int64)
    types = np.arange(len(new_items)) % graph.num_relations
    values = types / max(graph.num_relations - 1, 1)
    g, new = graph.with_new_user(new_items, types, values)
    users = np.repeat(np.arange(graph.num_users), graph.user_degree())
    rebuilt = RatingGraph.from_arrays(
        np.append(users, np.full(len(new_items), new)),
        np.append(graph.user_items, new_items),
        np.append(graph.user_types, types),
        np.append(graph.user_values, values),
        graph.num_users + 1,
        graph.num_items,
        graph.num_relations,
    )
    assert new == graph.num_users
    for name in ("user_indptr", "user_items", "user_types", "user_values"):
        assert np.array_equal(getattr(g, name), getattr(rebuilt, name)), name
    for name in ("item_indptr", "item_users", "item_types", "item_values"):
        assert np.array_equal(getattr(g, name), getattr(rebuilt, name)), name


# -------------------------------------------------------------- real data
def test_movielens_equals_oracle(shared_data):
    path = shared_data / "ml-100k" / "u1.base"
    if not path.is_file():
        pytest.skip(f"MovieLens-100K not found at {path}")
    data = np.loadtxt(path, dtype=np.int64)
    user, item, rating = data[:, 0] - 1, data[:, 1] - 1, data[:, 2]
    graph = RatingGraph.from_arrays(user, item, rating - 1, (rating - 1) / 4, 943, 1682, 5)
    rng = np.random.default_rng(7)
    rows = rng.integers(0, len(user), 40)
    users = np.concatenate([user[rows], rng.integers(0, 943, 10)])  # 40 training pairs, 10 arbitrary
    items = np.concatenate([item[rows], rng.integers(0, 1682, 10)])
    batch, node_index = extract_subgraphs_with_nodes(graph, users, items, max_nodes_per_hop=200)
    assert as_lists(batch, node_index) == oracle_batch(DictGraph.from_rating_graph(graph), users, items, 1, 200)
    # The same pairs, sampled: a different but valid choice.
    sampled = extract_subgraphs(graph, users, items, max_nodes_per_hop=200, rng=rng)
    assert sampled.num_nodes == batch.num_nodes  # caps bind identically, the chosen nodes differ


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 4)), max_size=12))
def test_runs_and_repeats_equal_their_slow_definitions(spec):
    """The cumulative-sum forms of ``cat(arange(s, s + n))`` and ``repeat_interleave`` used by
    extraction, with empty runs anywhere (first, last, several in a row)."""
    import torch

    starts = torch.tensor([s for s, _ in spec], dtype=torch.int64)
    lens = torch.tensor([n for _, n in spec], dtype=torch.int64)
    total = int(lens.sum())
    seg_start = torch.cumsum(lens, 0) - lens
    runs = [list(range(s, s + n)) for s, n in spec]
    for dtype in (torch.int32, torch.int64):
        got = subgraph_module._runs(starts, lens, seg_start, total, dtype)
        assert got.dtype == dtype and got.tolist() == [p for run in runs for p in run]
        values = starts * 7 - 100  # any values, negative included
        rep = subgraph_module._repeat(values, lens, seg_start, total, dtype)
        assert rep.tolist() == torch.repeat_interleave(values, lens).tolist()


def test_rating_graph_pickles_without_its_tensor_views():
    import pickle

    users, items = Vocabulary(["a", "b"], "user"), Vocabulary(["x", "y"], "item")
    scale = RatingScale.from_range(1.0, 5.0, 1.0)
    ratings = Ratings(np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([5.0, 3.0, 4.0]), users, items, scale)
    graph = RatingGraph.from_ratings(ratings)
    items = graph.user_tensors()[1]
    assert items.tolist() == graph.user_items.tolist()
    copy = pickle.loads(pickle.dumps(graph))
    assert "_user_tensors" not in copy.__dict__
    assert copy.user_tensors()[1].tolist() == items.tolist()


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build the kernels with")
def test_ratings_scan_kernel_splits_across_threads_without_changing_the_batch():
    """A batch large enough for the compiled scan to split its segments over threads: the same batch with
    1, 2 and 3 threads, and equal to the PyTorch path's."""
    from cmcrec.models.kernels import cpu_kernels

    assert cpu_kernels() is not None
    rng = np.random.default_rng(5)
    num_users, num_items = 300, 200
    mask = rng.random((num_users, num_items)) < 0.3
    user, item = np.nonzero(mask)
    rating = rng.integers(0, 5, user.size)
    graph = RatingGraph.from_arrays(user, item, rating, rating / 4, num_users, num_items, 5)
    rows = rng.choice(user.size, 40, replace=False)
    users, items = user[rows], item[rows]
    full, node_index = extract_subgraphs_with_nodes(graph, users, items, max_nodes_per_hop=None)
    selected_users = node_index[full.node_label.numpy() % 2 == 0]
    scanned = int(np.diff(graph.user_indptr)[selected_users].sum())  # every rating of every selected user
    assert scanned > 3 * 4096  # room for a chunk per thread (the kernel's grain is 4096 ratings)

    saved_threads, saved_scan = torch.get_num_threads(), subgraph_module._scan_kernels
    batches = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            batches.append(extract_subgraphs(graph, users, items, max_nodes_per_hop=None))
        subgraph_module._scan_kernels = lambda: None
        batches.append(extract_subgraphs(graph, users, items, max_nodes_per_hop=None))
    finally:
        torch.set_num_threads(saved_threads)
        subgraph_module._scan_kernels = saved_scan
    for other in batches[1:]:
        for name in ("edge_index", "edge_type", "edge_value", "node_label", "node_graph"):
            assert torch.equal(getattr(batches[0], name), getattr(other, name)), name
