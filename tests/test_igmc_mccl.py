"""IGMC and MCCL modules on small hand-built subgraph batches."""

from __future__ import annotations

import json

import pytest
import torch

from cmcrec.errors import ConfigError
from cmcrec.graph.batch import SubgraphBatch
from cmcrec.models.configs import IGMCConfig, MCCLConfig
from cmcrec.models.igmc import IGMC
from cmcrec.models.mccl import MCCL

R = 5  # rating levels 1..5

# One graph as (ratings among its nodes); nodes: 0 target user, 1 target item, then
# neighbour users (label 2) and neighbour items (label 3). Ratings are (user, item, level index).
GRAPHS = [
    {"users": 3, "items": 3, "ratings": [(0, 4, 4), (2, 1, 3), (3, 1, 0), (2, 4, 2), (3, 5, 1), (0, 5, 4)], "y": 5.0},
    {"users": 2, "items": 2, "ratings": [(0, 3, 0), (2, 1, 1), (2, 3, 0)], "y": 1.0},
    {"users": 2, "items": 3, "ratings": [(0, 3, 2), (0, 4, 2), (2, 1, 2), (2, 4, 3)], "y": 3.0},
]


def make_batch(graphs) -> SubgraphBatch:
    """Stack hand-drawn graphs in the extract_subgraphs layout (edge e + E/2 is edge e reversed)."""
    labels, src, dst, typ, node_graph, user_pos, item_pos, y = [], [], [], [], [], [], [], []
    offset = 0
    for g, spec in enumerate(graphs):
        nu, ni = spec["users"], spec["items"]
        # node ids: target user 0, target item 1, users 2..nu, items nu+1..
        labels += [0, 1] + [2] * (nu - 1) + [3] * (ni - 1)
        for u, i, t in spec["ratings"]:
            src.append(u + offset)
            dst.append(i + offset)
            typ.append(t)
        node_graph += [g] * (nu + ni)
        user_pos.append(offset)
        item_pos.append(offset + 1)
        y.append(spec["y"])
        offset += nu + ni
    edge_type = torch.tensor(typ + typ, dtype=torch.int64)
    return SubgraphBatch(
        node_label=torch.tensor(labels),
        edge_index=torch.tensor([src + dst, dst + src], dtype=torch.int64).reshape(2, -1),
        edge_type=edge_type,
        edge_value=edge_type.float() / (R - 1),
        node_graph=torch.tensor(node_graph),
        user_pos=torch.tensor(user_pos),
        item_pos=torch.tensor(item_pos),
        y=torch.tensor(y),
    )


SMALL = {"hidden_channels": 8, "num_layers": 2, "head_hidden": 16, "dropout": 0.0}
MCCL_VARIANTS = {
    "full": {},
    "view1": {"use_view2": False, "use_infonce": False},
    "view2": {"use_view1": False, "use_infonce": False},
    "nocl": {"use_infonce": False},
}


def build(kind: str, **overrides):
    torch.manual_seed(0)
    if kind == "igmc":
        return IGMC(IGMCConfig(**{**SMALL, **overrides}), R, 4, 1.0, 5.0)
    cfg = MCCLConfig(**{**SMALL, "latent_channels": 8, "scorer_hidden": 4, **MCCL_VARIANTS[kind], **overrides})
    return MCCL(cfg, R, 4, 1.0, 5.0)


KINDS = ["igmc", *MCCL_VARIANTS]


@pytest.mark.parametrize("kind", KINDS)
def test_forward_loss_shapes_range_and_determinism(kind):
    batch = make_batch(GRAPHS)
    model = build(kind)
    model.train()
    out = model(batch)
    assert out.prediction.shape == (3,)
    loss, parts = model.loss(batch, out)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(isinstance(v, float) and v == v for v in parts.values())
    assert "mse" in parts
    loss.backward()
    assert all(p.grad is not None for p in model.parameters()), "every parameter takes part (DDP-safe)"
    model.eval()
    with torch.no_grad():
        p1 = model(batch).prediction
        p2 = model(batch).prediction
    torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    assert bool(((p1 >= 1.0) & (p1 <= 5.0)).all())


@pytest.mark.parametrize("scorer_hidden", [4, 0])
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_forward_and_backward(kind, scorer_hidden):
    """The trainer's ``bf16`` option: under autocast the custom Functions see half-precision
    inputs and must still return float gradients of the right shape (CPU autocast stands in
    for CUDA's here)."""
    batch = make_batch(GRAPHS)
    model = build(kind) if kind == "igmc" else build(kind, scorer_hidden=scorer_hidden)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.loss(batch, model(batch))
    loss.backward()
    assert torch.isfinite(loss)
    for p in model.parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype and bool(torch.isfinite(p.grad).all())


def test_mccl_loss_parts():
    batch = make_batch(GRAPHS)
    model = build("full", embedding_l2=0.01)
    model.train()
    _, parts = model.loss(batch, model(batch))
    assert set(parts) == {"mse", "mse_v1", "mse_v2", "infonce", "kl", "recon", "emb_l2"}
    _, parts = build("view1").loss(batch, build("view1")(batch))
    assert set(parts) == {"mse"}
    model = build("view2")
    _, parts = model.loss(batch, model(batch))
    assert set(parts) == {"mse", "kl", "recon"}
    model = build("igmc")
    _, parts = model.loss(batch, model(batch))
    assert set(parts) == {"mse", "arr"}


@pytest.mark.parametrize("kind", KINDS)
def test_block_diagonal_eval_prediction_independent_of_batch(kind):
    model = build(kind).eval()
    with torch.no_grad():
        alone = model(make_batch(GRAPHS[1:2])).prediction
        together = model(make_batch(GRAPHS)).prediction
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_overfits_tiny_problem(kind):
    batch = make_batch(GRAPHS)
    model = build(kind, edge_dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    first = None
    for _ in range(40):
        out = model(batch)
        loss, parts = model.loss(batch, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = parts["mse"] if first is None else first
    assert parts["mse"] < 0.5 * first


def test_igmc_arr_penalty_matches_definition():
    model = build("igmc")
    expected = sum(((c.relation_weight()[1:] - c.relation_weight()[:-1]) ** 2).sum() for c in model.encoder.convs)
    torch.testing.assert_close(model.arr_penalty(), expected)


@pytest.mark.parametrize("cls", [IGMCConfig, MCCLConfig])
def test_config_round_trip(cls):
    cfg = cls(hidden_channels=16, max_nodes_per_hop=None, grad_clip=1.0)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert cls.from_dict(data) == cfg


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (IGMCConfig, "hidden_channels", 0),
        (IGMCConfig, "edge_dropout", 1.0),
        (IGMCConfig, "max_nodes_per_hop", 0),
        (IGMCConfig, "arr", -1.0),
        (MCCLConfig, "tau", 0.0),
        (MCCLConfig, "lambda_cl", -0.1),
        (MCCLConfig, "latent_channels", 0),
        (MCCLConfig, "dropout", 1.5),
        (IGMCConfig, "mean_over", "edge"),
        (MCCLConfig, "mean_over", "sum"),
    ],
)
def test_config_validation_names_field_and_value(cls, field, value):
    with pytest.raises(ConfigError, match=rf"{field}.*{value}"):
        cls(**{field: value})


def test_config_rejects_unknown_keys_and_bad_view_flags():
    with pytest.raises(ConfigError, match="bogus"):
        MCCLConfig.from_dict({"bogus": 1, "tau": 0.1})
    with pytest.raises(ConfigError, match="use_view1"):
        MCCLConfig(use_view1=False, use_view2=False, use_infonce=False)
    with pytest.raises(ConfigError, match="use_infonce"):
        MCCLConfig(use_view2=False)


def test_registry_builds_models():
    from cmcrec.models.registry import DataSpec, get_model

    data = DataSpec(num_users=3, num_items=3, num_relations=R, rating_min=1.0, rating_max=5.0, global_mean=3.0)
    for name in ["igmc", "mccl", "mccl-v1", "mccl-v2", "mccl-nocl"]:
        spec = get_model(name)
        model = spec.build(spec.make_config(SMALL), data)
        assert model.batch_kind == "subgraph"
        assert model(make_batch(GRAPHS)).prediction.shape == (3,)


def _sharp_gauss(d: int):
    """A Gaussian projection with σ ≈ 0 (z = μ), so the terms are deterministic given the sample."""
    from cmcrec.models.mccl import GaussianProjection

    torch.manual_seed(0)
    gauss = GaussianProjection(4, d).double()
    with torch.no_grad():
        gauss.logstd[2].bias.fill_(-40.0)
        gauss.logstd[2].weight.zero_()
    return gauss


def test_variational_terms_exact_values_and_unbiased_samples():
    from cmcrec.models.mccl import GaussianProjection, variational_terms

    batch = make_batch(GRAPHS)
    n = batch.num_nodes
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, 4, generator=g, dtype=torch.float64)
    targets = torch.cat([batch.user_pos, batch.item_pos])
    src, dst = batch.edge_index
    value = batch.edge_value.double()

    # KL has no noise: exact mode equals the all-node formula for any σ.
    torch.manual_seed(1)
    gauss = GaussianProjection(4, 3).double()
    mu, logstd = gauss(h)
    kl_all = (-0.5 * (1 + 2 * logstd - mu.pow(2) - (2 * logstd).exp()).sum(-1)).mean()
    z_t, kl, _ = variational_terms(gauss, h, targets, batch.edge_index, batch.edge_value, None, None, g)
    torch.testing.assert_close(kl, kl_all)
    assert z_t.shape == (6, 3)

    # With σ ≈ 0, z = μ: the exact reconstruction is the old all-directed-edges term.
    sharp = _sharp_gauss(3)
    mu = sharp.mu(h)
    recon_all = ((torch.sigmoid((mu[src] * mu[dst]).sum(-1)) - value) ** 2).mean()
    kl_sharp = (-0.5 * (1 + 2 * sharp(h)[1] - mu.pow(2) - (2 * sharp(h)[1]).exp()).sum(-1)).mean()
    z_t, kl, recon = variational_terms(sharp, h, targets, batch.edge_index, batch.edge_value, None, None, g)
    torch.testing.assert_close(recon, recon_all)
    torch.testing.assert_close(z_t, mu[targets])
    # Caps at least the batch's size are exact too.
    _, kl2, recon2 = variational_terms(sharp, h, targets, batch.edge_index, batch.edge_value, 100, 100, g)
    torch.testing.assert_close((kl2, recon2), (kl, recon))

    # Samples of 3 ratings and 4 nodes (fewer rows than nodes: the projection runs on the rows
    # alone): unbiased, so the mean over many draws approaches the exact terms.
    draws = torch.stack(
        [
            torch.stack(
                variational_terms(
                    sharp, h, targets[:1], batch.edge_index, batch.edge_value, 3, 4, torch.Generator().manual_seed(s)
                )[1:]
            )
            for s in range(3000)
        ]
    )  # (3000, 2): kl, recon
    assert bool((draws.std(0) > 0).all())
    for j, exact in enumerate([kl_sharp, recon_all]):
        assert abs(draws[:, j].mean() - exact) < 4 * draws[:, j].std() / 3000**0.5


def test_mccl_exact_and_sampled_view2_terms_options():
    for overrides in ({"recon_edges": None, "kl_nodes": None}, {"recon_edges": 2, "kl_nodes": 3}):
        model = build("view2", **overrides)
        model.train()
        loss, parts = model.loss(make_batch(GRAPHS), model(make_batch(GRAPHS)))
        assert parts["recon"] >= 0 and parts["kl"] == parts["kl"]
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ConfigError, match="kl_nodes"):
        MCCLConfig(kl_nodes=0)


@pytest.mark.parametrize("kind", ["full", "view2"])
def test_mccl_loss_is_finite_for_a_batch_without_edges(kind):
    """Two pairs whose only ratings were the removed targets: empty subgraphs, nothing to reconstruct."""
    empty = [{"users": 1, "items": 1, "ratings": [], "y": 4.0}, {"users": 1, "items": 1, "ratings": [], "y": 2.0}]
    for overrides in ({"recon_edges": None}, {"recon_edges": 2}):
        model = build(kind, **overrides)
        model.train()
        batch = make_batch(empty)
        loss, parts = model.loss(batch, model(batch))
        assert torch.isfinite(loss) and parts["recon"] == 0.0
        loss.backward()


def test_mccl_full_recon_option():
    model = build("view2", recon_edges=None)
    model.train()
    _, parts = model.loss(make_batch(GRAPHS), model(make_batch(GRAPHS)))
    assert parts["recon"] >= 0
    with pytest.raises(ConfigError, match="recon_edges"):
        MCCLConfig(recon_edges=0)


@pytest.mark.parametrize("kind", ["full", "view2"])
def test_eval_view2_on_targets_equals_full_computation(kind):
    """In eval mode view 2 runs its last layer and μ on the targets only; the
    prediction must equal reading z = μ off the full all-node computation."""
    from cmcrec.models.layers import RelationalGraph

    batch = make_batch(GRAPHS)
    model = build(kind).eval()
    with torch.no_grad():
        x = torch.nn.functional.one_hot(batch.node_label, 4).float()
        n, mean_over = batch.num_nodes, model.config.mean_over
        g = RelationalGraph.build(batch.edge_index, batch.edge_type, n, R, paired=True, mean_over=mean_over)
        mu = model.gauss.mu(model.view2(x, batch.edge_index, batch.edge_type, g))  # all nodes
        r2 = torch.cat([mu[batch.user_pos], mu[batch.item_pos]], dim=-1)
        expected = model.to_scale(model.head2(r2).squeeze(-1))
        out = model(batch)
    got = out.extras["prediction_v2"] if kind == "full" else out.prediction
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["igmc", "full"])
def test_linear_output_is_affine_and_clamped_outside_training(kind):
    model = build(kind, output="linear")
    logits = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    model.train()
    torch.testing.assert_close(model.to_scale(logits), torch.tensor([-3.0, 1.0, 3.0, 4.0, 5.0, 7.0]))
    model.eval()
    torch.testing.assert_close(model.to_scale(logits), torch.tensor([1.0, 1.0, 3.0, 4.0, 5.0, 5.0]))
    loss, _ = model.train().loss(make_batch(GRAPHS), model(make_batch(GRAPHS)))
    loss.backward()
    with pytest.raises(ConfigError, match="output"):
        IGMCConfig(output="tanh")


def test_mccl_mask_repeated_targets_reaches_infonce():
    """Masking changes InfoNCE only when a target repeats, and only with the option on."""
    import dataclasses

    batch = make_batch(GRAPHS)
    distinct = torch.arange(batch.num_targets)
    same = torch.zeros(batch.num_targets, dtype=torch.long)
    plain, masked = build("full"), build("full", mask_repeated_targets=True)
    masked.load_state_dict(plain.state_dict())

    def infonce(model, users, items):
        model.train()
        torch.manual_seed(5)  # the same edge dropout and reparameterisation noise each time
        return float(model(dataclasses.replace(batch, target_user=users, target_item=items)).extras["infonce"].detach())

    reference = infonce(plain, same, same)  # option off: ids are ignored
    assert infonce(plain, distinct, distinct) == reference
    assert infonce(masked, distinct, distinct) == pytest.approx(reference, rel=1e-6)
    # Every target the same user: the user term has no negatives left (0), the item term is unchanged.
    assert infonce(masked, same, distinct) < reference - 1e-3
    assert infonce(masked, same, same) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="target_user"):
        masked.train()(batch)  # a batch built without ids


def test_mccl_trains_with_mask_repeated_targets_through_dataloader_workers():
    """The ids survive the worker processes, pinning and the move to the device."""
    from synthetic import low_rank_split

    from cmcrec.config import RunContext
    from cmcrec.recommender import Recommender

    split = low_rank_split(seed=3)
    config = {
        "epochs": 1,
        "hidden_channels": 8,
        "num_layers": 2,
        "num_bases": 2,
        "head_hidden": 16,
        "latent_channels": 8,
        "scorer_hidden": 4,
        "max_nodes_per_hop": 4,
        "eval_max_nodes_per_hop": 4,
        "batch_size": 64,
        "lambda_cl": 1.0,
        "mask_repeated_targets": True,
    }
    rec = Recommender.fit("mccl", split.train, config, RunContext(num_workers=1, progress=False))
    assert rec.training["history"][0]["parts"]["infonce"] > 0
