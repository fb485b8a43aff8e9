"""The fused CPU kernels (cmcrec.models.kernels) against the PyTorch path they replace.

The PyTorch path is the reference: ``layers._fused_kernels`` patched to ``None``
makes the layers run it. Float64 gradchecks of the fused path run in
``test_layers.py`` (the layers take it whenever the kernels are built).
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from cmcrec.models import kernels, layers
from cmcrec.models.layers import EdgeScorer, RelationalGraph, scorer_values

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build the kernels with")


def _subgraph_batch(graphs: int, nodes: int, ratings: int, relations: int, seed: int):
    """A batch in the extract_subgraphs layout: per subgraph, ratings grouped by source, then all reversed."""
    g = torch.Generator().manual_seed(seed)
    src, dst, typ = [], [], []
    for k in range(graphs):
        s = torch.randint(0, nodes // 2, (ratings,), generator=g).sort().values
        d = torch.randint(nodes // 2, nodes, (ratings,), generator=g)
        src.append(s + k * nodes)
        dst.append(d + k * nodes)
        typ.append(torch.randint(0, relations, (ratings,), generator=g))
    src, dst, typ = torch.cat(src), torch.cat(dst), torch.cat(typ)
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    node_graph = torch.arange(graphs).repeat_interleave(nodes)
    return edge_index, torch.cat([typ, typ]), node_graph


def _scorer_run(scorer, x, graph, node_graph, graphs, probe):
    """Next-layer operator values from the scorer, and the gradients of ``probe · values``."""
    x = x.clone().requires_grad_()
    scorer.zero_grad()
    rows = graph.scorer_rows(scorer.per_rating)
    row_graph, count, runs = layers._row_groups(rows, node_graph, graphs, x.dtype)
    assert runs is not None  # subgraph order: the fused scorer values apply
    values = scorer_values(scorer.score_rows(x, graph), graph.norm_sorted.to(x.dtype), rows, row_graph, count, runs)
    (values * probe).sum().backward()
    return [values.detach(), x.grad, *(p.grad.clone() for p in scorer.parameters())]


@needs_compiler
def test_kernels_build_here():
    """CI has a compiler: a build failure must fail the suite, not fall back silently."""
    assert kernels.cpu_kernels() is not None


@needs_compiler
@pytest.mark.parametrize("per_rating", [True, False])
def test_fused_scorer_equals_pytorch_path(monkeypatch, per_rating):
    edge_index, edge_type, node_graph = _subgraph_batch(graphs=4, nodes=60, ratings=300, relations=5, seed=0)
    n = node_graph.numel()
    graph = RelationalGraph.build(edge_index, edge_type, n, 5, paired=True)
    torch.manual_seed(1)
    scorer = EdgeScorer(8, 16, per_rating=per_rating)
    x = torch.randn(n, 8)
    probe = torch.randn(edge_index.shape[1])
    fused = _scorer_run(scorer, x, graph, node_graph, 4, probe)
    monkeypatch.setattr(layers, "_fused_kernels", lambda *t: None)
    reference = _scorer_run(scorer, x, graph, node_graph, 4, probe)
    for got, want in zip(fused, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_compiler
def test_fused_kernels_do_not_depend_on_the_thread_count():
    """Each kernel's outputs, bit for bit, with 1, 2 and 3 threads (PyTorch's own products around
    them, the scorer's linear layers for one, may still round differently)."""
    edge_index, edge_type, node_graph = _subgraph_batch(graphs=3, nodes=400, ratings=3000, relations=5, seed=3)
    n = node_graph.numel()
    graph = RelationalGraph.build(edge_index, edge_type, n, 5, paired=True)
    rows = graph.scorer_rows(True)
    row_graph, count, runs = layers._row_groups(rows, node_graph, 3, torch.float32)
    g = torch.Generator().manual_seed(4)
    a, b, v = torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g), torch.randn(16, generator=g)
    grad_rows = torch.randn(rows.src.numel(), generator=g)
    s = torch.rand(rows.src.numel(), generator=g)
    norm = graph.norm_sorted
    grad_values = torch.randn(norm.numel(), generator=g)
    k = kernels.cpu_kernels()

    def run():
        fwd = k.edge_mlp_forward(a, b, v, rows.pairs)
        bwd = k.edge_mlp_backward(
            grad_rows, a, b, v, rows.pairs, rows.src_crow, rows.src_col, rows.dst_crow, rows.dst_col
        )
        values, w, scale = k.scorer_values_forward(s, norm, rows.to_key, runs, count)
        grad_s = k.scorer_values_backward(grad_values, w, scale, norm, rows.key_position, runs, count)
        return [fwd, *bwd, values, w, scale, grad_s]

    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(run())
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for x, y in zip(results[0], other, strict=True):
            assert torch.equal(x, y)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setenv(kernels.KERNELS_ENV, "0")
    assert kernels.cpu_kernels() is None


@needs_compiler
def test_a_failed_build_warns_once_and_the_layers_fall_back(monkeypatch, tmp_path):
    bad = tmp_path / "cpu_kernels.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(kernels, "_SOURCE", bad)
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setenv("CMCREC_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(kernels.KERNELS_ENV, raising=False)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert kernels.cpu_kernels() is None
    assert kernels.cpu_kernels() is None  # remembered: no second attempt, no second warning
    assert os.environ[kernels.KERNELS_ENV] == "0"  # and child processes do not try again
    edge_index, edge_type, node_graph = _subgraph_batch(graphs=2, nodes=20, ratings=30, relations=3, seed=5)
    graph = RelationalGraph.build(edge_index, edge_type, node_graph.numel(), 3, paired=True)
    scorer = EdgeScorer(4, 8, per_rating=True)
    out = _scorer_run(scorer, torch.randn(node_graph.numel(), 4), graph, node_graph, 2, torch.ones(edge_index.shape[1]))
    assert all(torch.isfinite(t).all() for t in out)


def test_builds_for_another_cpu_or_torch_never_share_a_folder(monkeypatch):
    name = kernels._build_name()
    monkeypatch.setattr(kernels, "_cpu_fingerprint", lambda: "flags: sse2\n")
    assert kernels._build_name() != name
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert kernels._build_name() != name


def test_loading_a_build_prunes_only_siblings_unused_for_a_month(tmp_path):
    now = 1_800_000_000.0
    month = kernels.STALE_BUILD_SECONDS
    current, recent, stale = (tmp_path / f"cmcrec_cpu_{n}" for n in ("cur", "recent", "stale"))
    other = tmp_path / "not_ours"  # the cache folder may hold other things: never touched
    for folder in (current, recent, stale, other):
        folder.mkdir()
        (folder / "x.so").write_bytes(b"")
        os.utime(folder, (now - 2 * month, now - 2 * month))
    os.utime(recent, (now - month + 60, now - month + 60))  # another venv used it 29 days ago
    kernels._mark_used_and_prune(current, now=now)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmcrec_cpu_cur", "cmcrec_cpu_recent", "not_ours"]
    assert current.stat().st_mtime == now  # stamped: its own age restarts


@needs_compiler
@pytest.mark.parametrize("mean_over", ["relation", "node"])
def test_fused_graph_build_equals_pytorch_build(monkeypatch, mean_over):
    """Every operator array, exactly (a stable counting sort gives the stable sort's permutation)."""
    edge_index, edge_type, node_graph = _subgraph_batch(graphs=3, nodes=50, ratings=400, relations=5, seed=6)
    n = node_graph.numel() + 7  # isolated nodes at the end: empty rows
    fused = RelationalGraph.build(edge_index, edge_type, n, 5, paired=True, mean_over=mean_over)
    monkeypatch.setattr(layers, "_fused_kernels", lambda *t: None)
    reference = RelationalGraph.build(edge_index, edge_type, n, 5, paired=True, mean_over=mean_over)
    for name in ("key_perm", "key_crow", "key_col", "src_crow", "src_col", "dst_crow", "t_perm", "key_sorted"):
        got, want = getattr(fused, name), getattr(reference, name)
        assert got.dtype == want.dtype, name
        assert torch.equal(got, want), name
    assert torch.equal(fused.norm_sorted, reference.norm_sorted)
    assert torch.equal(fused.key_position, reference.key_position)
    assert fused.paired and fused.mean_over == mean_over


@needs_compiler
def test_fused_graph_build_rejects_an_unpaired_layout():
    edge_index, edge_type, node_graph = _subgraph_batch(graphs=1, nodes=10, ratings=8, relations=3, seed=7)
    edge_type = edge_type.clone()
    edge_type[-1] = (edge_type[-1] + 1) % 3  # the last reverse no longer has its rating's type
    with pytest.raises(ValueError, match="paired=True needs edge e"):
        RelationalGraph.build(edge_index, edge_type, node_graph.numel(), 3, paired=True)


@needs_compiler
@pytest.mark.parametrize("grouped_by_source", [True, False])
def test_fused_scorer_rows_equal_pytorch_rows(monkeypatch, grouped_by_source):
    edge_index, edge_type, node_graph = _subgraph_batch(graphs=3, nodes=40, ratings=200, relations=5, seed=8)
    if not grouped_by_source:
        half = edge_index.shape[1] // 2
        order = torch.randperm(half, generator=torch.Generator().manual_seed(9))
        order = torch.cat([order, order + half])
        edge_index, edge_type = edge_index[:, order], edge_type[order]
    n = node_graph.numel() + 3
    fused = RelationalGraph.build(edge_index, edge_type, n, 5, paired=True).scorer_rows(True)
    monkeypatch.setattr(layers, "_fused_kernels", lambda *t: None)
    reference = RelationalGraph.build(edge_index, edge_type, n, 5, paired=True).scorer_rows(True)
    for name in ("src", "dst", "src_crow", "src_col", "dst_crow", "dst_col", "pairs", "to_key", "key_position"):
        got, want = getattr(fused, name), getattr(reference, name)
        assert got.dtype == want.dtype, name
        assert torch.equal(got, want), name


@needs_compiler
@pytest.mark.parametrize("mean_over", ["relation", "node"])
def test_fused_dropout_equals_pytorch_dropout(monkeypatch, mean_over):
    edge_index, edge_type, node_graph = _subgraph_batch(graphs=2, nodes=40, ratings=300, relations=5, seed=10)
    graph = RelationalGraph.build(edge_index, edge_type, node_graph.numel(), 5, paired=True, mean_over=mean_over)
    fused = graph.dropout_undirected(0.4, torch.Generator().manual_seed(11)).norm_sorted
    monkeypatch.setattr(layers, "_fused_kernels", lambda *t: None)
    reference = graph.dropout_undirected(0.4, torch.Generator().manual_seed(11)).norm_sorted
    assert torch.equal(fused, reference)
    assert 0 < int((fused == 0).sum()) < fused.numel()  # some dropped, some kept


@needs_compiler
def test_mccl_trains_the_same_with_and_without_the_kernels(monkeypatch):
    """Five Adam steps of a small MCCL (edge dropout, scorers, sampled view-2 terms) on hand-drawn
    subgraphs: the same losses and weights, to float rounding, on either path."""
    from test_igmc_mccl import GRAPHS, R, make_batch

    from cmcrec.models.configs import MCCLConfig
    from cmcrec.models.mccl import MCCL

    batch = make_batch(GRAPHS * 4)
    cfg = MCCLConfig(hidden_channels=8, num_layers=3, head_hidden=16, dropout=0.0, latent_channels=8)

    def train():
        torch.manual_seed(0)
        model = MCCL(cfg, R, 4, 1.0, 5.0).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(5):
            loss, _ = model.loss(batch, model(batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return torch.stack(losses), [p.detach().clone() for p in model.parameters()]

    fused_losses, fused_params = train()
    monkeypatch.setattr(layers, "_fused_kernels", lambda *t: None)
    losses, params = train()
    torch.testing.assert_close(fused_losses, losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(fused_params, params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_compiler
def test_fused_graph_build_names_an_out_of_range_index():
    edge_index, edge_type, node_graph = _subgraph_batch(graphs=1, nodes=10, ratings=8, relations=3, seed=12)
    with pytest.raises(RuntimeError, match="edge type is outside"):
        RelationalGraph.build(edge_index, edge_type + 3, node_graph.numel(), 3, paired=True)
    with pytest.raises(RuntimeError, match="node index is outside"):
        RelationalGraph.build(edge_index, edge_type, node_graph.numel() - 5, 3, paired=True)


def test_the_ninja_package_is_put_on_path_for_the_build_only(monkeypatch):
    """A virtual environment used without activating it has the ninja package's binary off PATH;
    PyTorch's builder runs ``ninja`` from PATH."""
    import os

    import ninja

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    with kernels._ninja_on_path():
        assert os.environ["PATH"].split(os.pathsep) == [ninja.BIN_DIR, "/nonexistent"]
        assert os.path.isfile(os.path.join(ninja.BIN_DIR, "ninja"))
    assert os.environ["PATH"] == "/nonexistent"
    monkeypatch.setattr(kernels.shutil, "which", lambda name: "/usr/bin/ninja")  # one on PATH: left alone
    with kernels._ninja_on_path():
        assert os.environ["PATH"] == "/nonexistent"


@needs_compiler
def test_extraction_scan_names_an_out_of_range_segment():
    k = kernels.cpu_kernels()
    indptr = torch.tensor([0, 2, 3])  # 2 users
    rated_item = torch.tensor([0, 1, 1], dtype=torch.int32)
    lookup = torch.full((2 * 2,), -1, dtype=torch.int32)  # 2 subgraphs x 2 items

    def scan(user, graph):
        one = torch.tensor([user])
        return k.extraction_scan(indptr, rated_item, one, torch.tensor([graph]), torch.tensor([-1]), lookup, 2)

    count, dst, pos = scan(1, 1)
    assert count.tolist() == [0] and dst.numel() == 0 and pos.numel() == 0
    for user, graph in ((2, 0), (-1, 0), (0, 2)):
        with pytest.raises(RuntimeError, match="outside the graph or the look-up table"):
            scan(user, graph)
