"""The ranking-aware training term: its loss, its negative sampler and the batches that carry it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from synthetic import low_rank_ratings

from cmcrec.errors import ConfigError
from cmcrec.graph.csr import RatingGraph
from cmcrec.graph.subgraph import extract_subgraphs_with_nodes
from cmcrec.models.configs import IGMCConfig, MCCLConfig
from cmcrec.models.layers import ranking_info_nce
from cmcrec.models.registry import DataSpec, get_model
from cmcrec.training.batching import SubgraphBatcher, make_batcher, sample_unrated, unrated_keys


def test_ranking_info_nce_hand_worked():
    score = torch.tensor([0.9, 0.2, 0.5, 0.1, 0.7])
    rank_index = torch.tensor([[0, 1, 2], [4, 3, 1]])
    tau = 0.5
    rows = [[0.9, 0.2, 0.5], [0.7, 0.1, 0.2]]
    want = np.mean([-r[0] / tau + math.log(sum(math.exp(v / tau) for v in r)) for r in rows])
    assert float(ranking_info_nce(score, rank_index, tau)) == pytest.approx(want, rel=1e-6)


def test_ranking_info_nce_gradient_lifts_positive_and_lowers_negatives():
    score = torch.tensor([0.3, 0.6, 0.4], requires_grad=True)
    ranking_info_nce(score, torch.tensor([[0, 1, 2]]), 0.1).backward()
    assert score.grad[0] < 0 < score.grad[1] and score.grad[2] > 0  # descent raises 0, lowers 1 and 2
    assert float(score.grad.sum()) == pytest.approx(0.0, abs=1e-6)


def test_ranking_info_nce_empty_is_zero_with_gradient_path():
    score = torch.tensor([0.3, 0.6], requires_grad=True)
    loss = ranking_info_nce(score, torch.zeros((0, 3), dtype=torch.long), 0.1)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(score.grad, torch.zeros(2))


@pytest.fixture(scope="module")
def ratings():
    return low_rank_ratings(num_users=30, num_items=25, density=0.6, seed=5)


@pytest.fixture(scope="module")
def graph(ratings):
    return RatingGraph.from_ratings(ratings)


def test_sample_unrated_never_returns_a_rated_item(graph):
    users = np.arange(graph.num_users)
    drawn = sample_unrated(graph, users, 7, np.random.default_rng(0))
    assert drawn.shape == (graph.num_users, 7)
    rated = {(u, i) for u in users for i in graph.user_items[graph.user_indptr[u] : graph.user_indptr[u + 1]]}
    assert not {(u, i) for u in users for i in drawn[u]} & rated
    assert drawn.min() >= 0 and drawn.max() < graph.num_items


def test_sample_unrated_is_uniform_over_unrated_items(graph):
    user = int(np.argmax(np.diff(graph.user_indptr)))
    unrated = np.setdiff1d(
        np.arange(graph.num_items), graph.user_items[graph.user_indptr[user] : graph.user_indptr[user + 1]]
    )
    drawn = sample_unrated(graph, np.array([user]), 20000, np.random.default_rng(1)).ravel()
    counts = np.bincount(drawn, minlength=graph.num_items)
    assert set(np.flatnonzero(counts)) == set(unrated)
    expected = 20000 / unrated.size
    assert np.all(np.abs(counts[unrated] - expected) < 5 * math.sqrt(expected))  # loose chi-like bound


def test_batcher_appends_negatives_of_the_same_user(ratings, graph):
    batcher = SubgraphBatcher(graph, 5, seed=3, rank_negatives=2, rank_threshold=4.0)
    rows = np.arange(40)
    users, items, y = ratings.user[rows], ratings.item[rows], ratings.rating[rows].astype(np.float32)
    batch = batcher(users, items, y)
    positive = np.flatnonzero(y >= 4.0)
    assert batch.num_labelled == 40
    torch.testing.assert_close(batch.y, torch.from_numpy(y))
    assert batch.num_targets == 40 + 2 * positive.size
    assert batch.rank_index.shape == (positive.size, 3)
    np.testing.assert_array_equal(batch.rank_index[:, 0].numpy(), positive)
    np.testing.assert_array_equal(batch.rank_index[:, 1:].numpy().ravel(), np.arange(40, batch.num_targets))
    # The appended targets are pairs of the positive's user with an item that user never rated.
    again = SubgraphBatcher(graph, 5, seed=3, rank_negatives=2, rank_threshold=4.0)
    rng = again.generator()
    negatives = sample_unrated(graph, users[positive], 2, rng)
    _, nodes = extract_subgraphs_with_nodes(
        graph,
        np.concatenate([users, np.repeat(users[positive], 2)]),
        np.concatenate([items, negatives.ravel()]),
        max_nodes_per_hop=5,
        rng=rng,
    )
    user_of = nodes[batch.user_pos.numpy()]
    item_of = nodes[batch.item_pos.numpy()]
    # The batch names each target by its graph index, the appended ones included.
    np.testing.assert_array_equal(batch.target_user.numpy(), user_of)
    np.testing.assert_array_equal(batch.target_item.numpy(), item_of)
    np.testing.assert_array_equal(user_of[40:], np.repeat(users[positive], 2))
    np.testing.assert_array_equal(item_of[40:], negatives.ravel())
    assert np.all(graph.edge_position(user_of[40:], item_of[40:]) < 0)


def test_batches_name_their_targets_without_ranking_negatives_too(ratings, graph):
    rows = np.arange(25)
    batch = SubgraphBatcher(graph, 5, seed=3)(ratings.user[rows], ratings.item[rows], ratings.rating[rows])
    np.testing.assert_array_equal(batch.target_user.numpy(), ratings.user[rows])
    np.testing.assert_array_equal(batch.target_item.numpy(), ratings.item[rows])


def test_batcher_without_positives_has_empty_rank_index(ratings, graph):
    batcher = SubgraphBatcher(graph, 5, seed=3, rank_negatives=2, rank_threshold=99.0)
    batch = batcher(ratings.user[:10], ratings.item[:10], ratings.rating[:10].astype(np.float32))
    assert batch.num_targets == 10 and batch.rank_index.shape == (0, 3)


def test_make_batcher_adds_negatives_only_while_training(graph):
    config = MCCLConfig(rank_weight=1.0, rank_negatives=4)
    train = make_batcher("subgraph", config, graph, train=True, seed=0, rating_range=(1.0, 5.0))
    assert train.rank_negatives == 4 and train.rank_threshold == 4.0
    assert make_batcher("subgraph", config, graph, train=False, seed=0).rank_negatives == 0
    assert make_batcher("subgraph", MCCLConfig(), graph, train=True, seed=0).rank_negatives == 0
    with pytest.raises(ValueError, match="rating_range"):
        make_batcher("subgraph", config, graph, train=True, seed=0)


@pytest.mark.parametrize("threshold", [1.0, 5.5, float("nan")])
def test_make_batcher_rejects_a_threshold_outside_the_scale(graph, threshold):
    config = MCCLConfig(rank_weight=1.0, rank_threshold=threshold)
    with pytest.raises(ConfigError, match="rank_threshold"):
        make_batcher("subgraph", config, graph, train=True, seed=0, rating_range=(1.0, 5.0))


def test_positive_threshold():
    assert MCCLConfig().positive_threshold(1, 5) == 4.0
    assert MCCLConfig().positive_threshold(0.5, 5) == pytest.approx(3.875)
    assert IGMCConfig(rank_threshold=3.0).positive_threshold(1, 5) == 3.0


@pytest.mark.parametrize(("field", "value"), [("rank_weight", -1.0), ("rank_negatives", 0), ("rank_tau", 0.0)])
def test_config_rejects_bad_rank_fields(field, value):
    with pytest.raises(ConfigError, match=field):
        MCCLConfig(**{field: value})


def test_mccl_loss_adds_weighted_rank_term(ratings, graph):
    torch.manual_seed(0)
    spec = get_model("mccl-rank")
    config = spec.make_config({"hidden_channels": 8, "num_layers": 2, "latent_channels": 8, "scorer_hidden": 4})
    model = spec.build(config, DataSpec.from_ratings(ratings)).train()
    batcher = make_batcher("subgraph", config, graph, train=True, seed=0, rating_range=(1.0, 5.0))
    batch = batcher(ratings.user[:50], ratings.item[:50], ratings.rating[:50].astype(np.float32))
    torch.manual_seed(1)
    output = model(batch)
    total, parts = model.loss(batch, output)
    assert output.prediction.shape == (batch.num_targets,)
    score = (output.prediction - 1.0) / 4.0
    assert parts["rank"] == pytest.approx(
        float(ranking_info_nce(score.detach(), batch.rank_index, config.rank_tau)), rel=1e-5
    )
    assert parts["mse"] == pytest.approx(float(((output.prediction[:50].detach() - batch.y) ** 2).mean()), rel=1e-5)
    no_rank = sum(v for k, v in parts.items() if k in ("mse", "mse_v1", "mse_v2")) + sum(
        getattr(config, w) * parts[k]
        for k, w in (("infonce", "lambda_cl"), ("kl", "beta_kl"), ("recon", "gamma_recon"))
    )
    assert float(total.detach()) == pytest.approx(no_rank + config.rank_weight * parts["rank"], rel=1e-5)


def test_mccl_view_contrast_ignores_ranking_negatives(ratings, graph):
    # InfoNCE between the views runs over the rated targets only. Without neighbour caps the
    # subgraphs are deterministic, so a batch with ranking negatives and one without them hold
    # the same subgraphs for the rated targets; with edge dropout off and σ forced to ~0 (z = μ)
    # both batches must give the same InfoNCE.
    from dataclasses import replace

    from cmcrec.graph.subgraph import extract_subgraphs

    torch.manual_seed(0)
    spec = get_model("mccl-rank")
    config = spec.make_config(
        {
            "hidden_channels": 8,
            "num_layers": 2,
            "latent_channels": 8,
            "scorer_hidden": 4,
            "edge_dropout": 0.0,
            "max_nodes_per_hop": None,
        }
    )
    model = spec.build(config, DataSpec.from_ratings(ratings)).train()
    model.gauss.logstd.register_forward_hook(lambda m, i, o: torch.full_like(o, -30.0))
    users, items = ratings.user[:30], ratings.item[:30]
    y = ratings.rating[:30].astype(np.float32)
    batcher = make_batcher("subgraph", config, graph, train=True, seed=0, rating_range=(1.0, 5.0))
    with_negatives = batcher(users, items, y)
    assert with_negatives.num_targets > 30
    plain = extract_subgraphs(graph, users, items, max_nodes_per_hop=None, y=y)
    a = model(with_negatives).extras["infonce"].detach()
    b = model(plain).extras["infonce"].detach()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The old behaviour (contrast over every target) would differ: check the test can tell.
    everything = replace(with_negatives, y=torch.zeros(with_negatives.num_targets))
    c = model(everything).extras["infonce"].detach()
    assert not torch.allclose(a, c, rtol=1e-3)


def test_sample_unrated_matches_a_slow_enumeration():
    # Each r maps to the r-th unrated item: check by enumerating every user's unrated list.
    r_graph = RatingGraph.from_ratings(low_rank_ratings(num_users=12, num_items=9, density=0.7, seed=2))
    keys = unrated_keys(r_graph)
    for u in range(r_graph.num_users):
        rated = set(r_graph.user_items[r_graph.user_indptr[u] : r_graph.user_indptr[u + 1]].tolist())
        unrated = [i for i in range(r_graph.num_items) if i not in rated]
        if not unrated:
            continue
        for r, want in enumerate(unrated):
            below = np.searchsorted(keys, u * (r_graph.num_items + 1) + r, side="right") - r_graph.user_indptr[u]
            assert r + below == want
        # And the sampler itself draws exactly that set.
        drawn = sample_unrated(r_graph, np.array([u]), 400, np.random.default_rng(u), keys).ravel()
        assert set(drawn.tolist()) == set(unrated)


def test_sample_unrated_refuses_a_user_who_rated_everything():
    from cmcrec.data.ratings import Ratings, RatingScale, Vocabulary

    full = Ratings(
        user=np.array([0, 0, 1]),
        item=np.array([0, 1, 0]),
        rating=np.array([5.0, 4.0, 3.0]),
        users=Vocabulary(["a", "b"], "user"),
        items=Vocabulary(["x", "y"], "item"),
        scale=RatingScale.from_range(1, 5),
    )
    g = RatingGraph.from_ratings(full)
    assert sample_unrated(g, np.array([1]), 3, np.random.default_rng(0)).tolist() == [[1, 1, 1]]
    with pytest.raises(ValueError, match="every item"):
        sample_unrated(g, np.array([0]), 1, np.random.default_rng(0))
    batch = SubgraphBatcher(g, None, seed=0, rank_negatives=1, rank_threshold=4.0)(
        np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([5.0, 4.0, 3.0], np.float32)
    )
    assert batch.rank_index.shape == (0, 2)  # user a's positives have no unrated item to face
