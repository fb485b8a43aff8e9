"""Biased MF and the bias baseline: the conformance suite plus MF-specific checks."""

from __future__ import annotations

import numpy as np
import torch
from conformance import ModelConformance
from synthetic import low_rank_ratings

from cmcrec.models.mf import BiasedMF, MFConfig
from cmcrec.models.registry import DataSpec


class TestMF(ModelConformance):
    model = "mf"
    overrides = {"epochs": 30, "factors": 4, "lr": 0.02, "batch_size": 32, "patience": None}


class TestBias(ModelConformance):
    model = "bias"
    overrides = {"epochs": 30, "lr": 0.05, "batch_size": 32}


def _module(factors: int = 3) -> BiasedMF:
    data = DataSpec(num_users=4, num_items=5, num_relations=5, rating_min=1, rating_max=5, global_mean=3.0)
    torch.manual_seed(0)
    return BiasedMF.build(MFConfig(factors=factors, init_std=0.5), data)


def test_score_is_mu_plus_biases_plus_dot():
    m = _module()
    with torch.no_grad():
        m.user_bias.weight[2] = 0.5
        m.item_bias.weight[4] = -0.25
    u, i = torch.tensor([2]), torch.tensor([4])
    expected = 3.0 + 0.5 - 0.25 + float((m.user_factors.weight[2] @ m.item_factors.weight[4]).detach())
    assert float(m.score(u, i).detach()) == np.float32(expected)
    np.testing.assert_allclose(m.score_all(u)[0, 4].item(), expected, rtol=1e-6)


def test_fold_in_matches_least_squares():
    """Fold-in equals the ridge solution computed the slow obvious way with NumPy."""
    m = _module()
    items = torch.tensor([0, 1, 3])
    ratings = torch.tensor([5.0, 2.0, 4.0])
    bias, factors = m.fold_in(items, ratings)
    q = m.item_factors.weight[items].detach().double().numpy()
    resid = ratings.double().numpy() - 3.0 - m.item_bias.weight[items, 0].detach().double().numpy()
    x = np.hstack([np.ones((3, 1)), q])
    lam = m.config.reg * 3
    sol = np.linalg.solve(x.T @ x + lam * np.eye(4), x.T @ resid)
    np.testing.assert_allclose(bias.item(), sol[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(factors.numpy(), sol[1:], rtol=1e-5, atol=1e-6)


def test_fold_in_without_regularisation_fits_few_ratings_exactly():
    """reg=0 with fewer ratings than unknowns: the normal equations are singular; fold-in
    returns NumPy's minimum-norm least-squares solution, which reproduces the ratings."""
    data = DataSpec(num_users=4, num_items=5, num_relations=5, rating_min=1, rating_max=5, global_mean=3.0)
    torch.manual_seed(0)
    m = BiasedMF.build(MFConfig(factors=3, init_std=0.5, reg=0.0), data)
    items = torch.tensor([1, 4])
    ratings = torch.tensor([5.0, 2.0])
    bias, factors = m.fold_in(items, ratings)
    q = m.item_factors.weight[items].detach().double().numpy()
    resid = ratings.double().numpy() - 3.0 - m.item_bias.weight[items, 0].detach().double().numpy()
    sol = np.linalg.pinv(np.hstack([np.ones((2, 1)), q])) @ resid
    np.testing.assert_allclose(bias.item(), sol[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(factors.numpy(), sol[1:], rtol=1e-5, atol=1e-6)
    fitted = bias.item() + q @ factors.double().numpy()
    np.testing.assert_allclose(fitted, resid, atol=1e-5)


def test_mf_learns_low_rank_data_better_than_bias():
    from synthetic import low_rank_split

    from cmcrec.recommender import Recommender

    split = low_rank_split(seed=5, num_users=60, num_items=40, density=0.6)
    mf = Recommender.fit(
        "mf", split.train, {"epochs": 40, "factors": 4, "lr": 0.02, "batch_size": 64, "patience": None}
    )
    bias = Recommender.fit("bias", split.train, {"epochs": 40, "lr": 0.05, "batch_size": 64, "patience": None})

    def rmse(r):
        p = r.predict_indices(split.test.user, split.test.item)
        return float(np.sqrt(np.mean((p - split.test.rating) ** 2)))

    assert rmse(mf) < rmse(bias)
    assert low_rank_ratings().num_users == 40
