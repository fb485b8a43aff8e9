"""Building blocks of the subgraph models: R-GCN, edge scorer, readout, InfoNCE.

Speed notes (CPU first, because that is where most users train):

* Message passing is a sparse-dense product. :class:`RelationalGraph` sorts
  the edges once per batch (a stable int32 radix sort) into CSR operators that
  every layer of a stack reuses. Aggregating all relations is then one
  ``(N*R, N) @ (N, C)`` sparse product followed by one dense
  ``(N, R*C) @ (R*C, C_out)`` matmul with the stacked relation weights — no
  Python loop over relations, no ``(E, C)`` message tensor.
* The backward of a row gather ``x[index]`` is a scatter-add, which PyTorch's
  CPU ``index_add_`` runs an order of magnitude slower than a CSR product.
  :func:`gather_rows` keeps the fast forward gather and runs the backward as a
  sparse product with the pre-sorted transpose.
* On CPU, the per-batch work that is a chain of whole-array passes in PyTorch
  (the paired graph's counting sort, edge dropout, the edge scorer's MLP and
  its per-subgraph rescaling) runs in fused kernels compiled on first use
  (:mod:`cmcrec.models.kernels`); each has the PyTorch path beside it, which
  runs on GPU, in half precision, or where the kernels cannot be built, and
  which ``tests/test_kernels.py`` holds them to.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EdgeScorer",
    "RGCNConv",
    "RGCNStack",
    "RelationalGraph",
    "ScorerRows",
    "dropout_edges_undirected",
    "gather_rows",
    "info_nce",
    "scorer_values",
    "mlp_head",
    "ranking_info_nce",
]

_INT32_MAX = 2**31 - 1
_EMPTY_INDEX = torch.empty(0, dtype=torch.int64)  # "no index" for the fused kernels' optional index arguments


# The float ops PyTorch computes on CPU with MKL's vector math library (IMPLEMENT_VML_MKL in ATen/cpu/vml.h).
_MKL_VML_OPS = (
    torch.acos, torch.asin, torch.atan, torch.cos, torch.erf, torch.erfc, torch.erfinv, torch.exp,
    torch.log, torch.log10, torch.log2, torch.sin, torch.sqrt, torch.tan, torch.tanh, torch.trunc,
)  # fmt: skip
_vml_warm: set[int] = set()


def warm_cpu_math() -> None:
    """Call each MKL vector-math function once per thread before a model uses it.

    Measured with torch 2.13 (MKL 2024.2) on 2 threads: in some processes the first
    ``torch.tanh`` after the process's first MKL sparse product computed its first thread's
    half of the tensor with an error of up to 4e-5 instead of 3e-8; the second call was
    exact. Training from the same seed then drifted apart between processes: 20 MCCL steps
    gave 2 different models in 60 processes (53 and 7). Calling each function once first,
    on a tensor small enough for one thread and on one split across every thread, gave one
    model in 60 of 60 (``benchmarks/determinism.py``). Once per thread count; a few
    milliseconds.

    This is pytorch/pytorch#188792: oneMKL 2024.2 (the MKL the torch wheels bundle) picks
    each VML function's kernel lazily on its first call, and concurrent first calls from
    intra-op threads can run a low-accuracy kernel on one chunk. Reported gone with
    oneMKL >= 2025.0; the upstream fix under review (#188791) is the same warm-up.
    """
    threads = torch.get_num_threads()
    if threads in _vml_warm:
        return
    _vml_warm.add(threads)
    small = torch.full((8,), 0.5)
    large = torch.full((2 * 32768 * threads,), 0.5)  # above ATen's grain size on every thread
    for op in _MKL_VML_OPS:
        op(small)
        op(large)


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if values.device.type == "cpu":
        warm_cpu_math()  # before the first MKL sparse product: see its docstring
    # CSR is only a kernel inside our autograd Functions; its "beta" warning would not help callers.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _spmm(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` for a CSR ``a`` and a dense ``x``.

    On CPU, ``a @ x`` zero-fills its output and copies it around the MKL call;
    ``addmm`` with ``beta=0`` into a fresh buffer skips both (2-3x faster on a
    batch's aggregation operator; ``beta=0`` never reads the buffer, so its
    uninitialised contents cannot leak in).
    """
    if x.device.type != "cpu":
        return a @ x
    out = x.new_empty(a.shape[0], x.shape[1])
    return torch.addmm(out, a, x.contiguous(), beta=0.0, out=out)


def _incidence_sum(crow: torch.Tensor, col: torch.Tensor, grad: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``(N, C)`` sums of the rows of ``grad`` ``(M, C)`` that the CSR pattern ``(crow, col)`` gives each node:
    the adjoint of a row gather, as one CSR product instead of ``index_add_``."""
    incidence = _csr(crow, col, grad.new_ones(col.numel()), (num_nodes, grad.shape[0]))
    return _spmm(incidence, grad)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # Sparse kernels run in float32/float64; half-precision inputs (autocast) are upcast.
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _narrow_keys(key: torch.Tensor, slots: int, idx: torch.dtype) -> torch.Tensor:
    """Sort keys in ``[0, slots)`` in the narrowest integer type PyTorch radix-sorts.

    A stable CPU sort of int16 keys is about 2x faster than of int32 and 4x
    faster than of int64 (fewer radix passes). Shifting by ``-2**15`` keeps the
    order, so the stable sort's permutation is the same.
    """
    if slots <= 2**16:
        return (key - 2**15).to(torch.int16)
    return key.to(idx)


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """int64 positions of the ``True`` entries of a 1-D mask (on CPU NumPy's, about twice as fast)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def _crow(counts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    crow = counts.new_zeros(counts.numel() + 1)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow.to(dtype)


@dataclass
class ScorerRows:
    """The rows of an edge scorer: one per directed edge (key order) or one per rating.

    Attributes:
        src: ``(M,)`` source node of each row (gathered for the scorer's source half).
        dst: ``(M,)`` destination node of each row.
        src_crow, src_col: CSR pattern ``(N, M)`` of the rows by source node (the backward's scatter).
        dst_crow, dst_col: CSR pattern ``(N, M)`` of the rows by destination node.
        pairs: ``(M, 2)`` ``[src, N + dst]`` of each row: the bags of :meth:`gather_sum`.
        to_key: int64 ``(E,)`` row of each key-order position of the operator; ``None`` when
            the rows are already the key order.
        key_position: ``(E,)`` key-order position of each edge, in edge order (given with
            ``to_key``: the rows are the first ``E/2`` edges, each also edge ``m + E/2`` reversed).
    """

    src: torch.Tensor
    dst: torch.Tensor
    src_crow: torch.Tensor
    src_col: torch.Tensor
    dst_crow: torch.Tensor
    dst_col: torch.Tensor
    pairs: torch.Tensor
    to_key: torch.Tensor | None
    key_position: torch.Tensor | None = None

    def gather_sum(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a[src] + b[dst]`` ``(M, H)`` (not differentiable: for the scorer Functions' forwards).

        One fused embedding-bag pass over ``[a; b]`` instead of two gathers and an add.
        """
        return F.embedding_bag(self.pairs, torch.cat([a, b]), mode="sum")

    def scatter(self, grad: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums of per-row ``grad`` ``(M, H)`` over each node's rows as source and as destination.

        The backward of ``a[src] + b[dst]``: two CSR products with the
        pre-sorted incidence patterns instead of ``index_add_``.
        """
        return (
            _incidence_sum(self.src_crow, self.src_col, grad, num_nodes),
            _incidence_sum(self.dst_crow, self.dst_col, grad, num_nodes),
        )


class _ScorerValues(torch.autograd.Function):
    """Operator values in key order from per-row scores: ``norm_k · w[to_key_k]`` with
    ``w_m = s_m · count_g / total_g`` (``g`` the subgraph of row ``m``, ``total_g`` the sum of
    its rows' scores), so a subgraph's weights average 1.

    One Function instead of a chain of autograd ops. The backward, with ``gw`` the
    gradient reaching ``w`` (each rating's two key positions added by two gathers,
    not ``index_add_`` over ``E`` entries)::

        ∂L/∂s_m = (count_g / total_g) · (gw_m − Σ_{m' ∈ g} gw_{m'} w_{m'} / count_g)
    """

    @staticmethod
    def forward(ctx, s, norm, rows: ScorerRows, row_graph, row_count, runs):
        ctx.rows, ctx.runs = rows, runs
        ctx.kernels = kernels = _fused_kernels(s, norm, row_count) if runs is not None else None
        if kernels is not None:  # one pass per subgraph and one over the operator (cmcrec.models.kernels)
            to_key = rows.to_key if rows.to_key is not None else _EMPTY_INDEX
            out, w, scale = kernels.scorer_values_forward(s, norm, to_key, runs, row_count)
            ctx.save_for_backward(w, scale, norm, row_graph, row_count)
            return out
        total = _graph_sums(s, row_graph, row_count.numel(), runs)  # (B,)
        scale = row_count / total
        w = s * scale.index_select(0, row_graph)  # (M,)
        ctx.save_for_backward(w, scale, norm, row_graph, row_count)
        return norm * (w if rows.to_key is None else w.index_select(0, rows.to_key))

    @staticmethod
    def backward(ctx, grad):
        w, scale, norm, row_graph, row_count = ctx.saved_tensors
        rows: ScorerRows = ctx.rows
        if ctx.kernels is not None:
            position = rows.key_position if rows.to_key is not None else _EMPTY_INDEX
            grad_s = ctx.kernels.scorer_values_backward(grad, w, scale, norm, position, ctx.runs, row_count)
            return grad_s, None, None, None, None, None
        gk = grad * norm  # (E,)
        if rows.to_key is None:
            gw = gk
        else:
            by_edge = gk.index_select(0, rows.key_position)  # edge order: ratings, then their reverses
            half = by_edge.numel() // 2
            gw = by_edge[:half] + by_edge[half:]
        inner = _graph_sums(gw * w, row_graph, row_count.numel(), ctx.runs) / row_count  # (B,)
        grad_s = (gw - inner.index_select(0, row_graph)) * scale.index_select(0, row_graph)
        return grad_s, None, None, None, None, None


def _graph_sums(values: torch.Tensor, row_graph: torch.Tensor, num_graphs: int, runs: torch.Tensor | None):
    """Per-subgraph sums ``(B,)`` of per-row ``values``: segment sums over ``runs`` (rows in subgraph
    order; about 4x faster than ``index_add_`` into a few slots on CPU) or an ``index_add_``."""
    if runs is not None:
        return torch.segment_reduce(values, "sum", lengths=runs)
    return values.new_zeros(num_graphs).index_add_(0, row_graph, values)


def scorer_values(
    s: torch.Tensor,
    norm: torch.Tensor,
    rows: ScorerRows,
    row_graph: torch.Tensor,
    row_count: torch.Tensor,
    runs: torch.Tensor | None = None,
) -> torch.Tensor:
    """What an R-GCN layer after an edge scorer multiplies its messages by, in key order: ``(E,)``.

    Args:
        s: ``(M,)`` raw scores of the scorer rows (:meth:`EdgeScorer.score_rows`); differentiable.
        norm: ``(E,)`` the operator's values before weighting (``norm_sorted``), in key order.
        rows: the :class:`ScorerRows` the scores are for.
        row_graph: int64 ``(M,)`` subgraph of each row.
        row_count: ``(B,)`` rows per subgraph (as ``s``'s dtype, at least 1).
        runs: int64 ``(B,)`` rows per subgraph when ``row_graph`` is ascending (faster sums);
            ``None`` for any order.

    Returns:
        ``norm_k · w[to_key_k]`` with the scores rescaled to mean 1 within each subgraph
        (:meth:`EdgeScorer.weights_rows`). Differentiable in ``s`` only (``norm`` is a
        constant of the graph: a ``norm`` that requires grad is an error).
    """
    if norm.requires_grad:
        raise ValueError("scorer_values: norm must not require grad (it is a constant of the graph)")
    return _ScorerValues.apply(s, norm, rows, row_graph, row_count, runs)


@dataclass
class RelationalGraph:
    """Sorted sparse operators of one typed graph, built once and shared by a stack of layers.

    Build with :meth:`build`. Edge-aligned tensors are in the caller's edge
    order unless their name ends in ``_sorted``: those are in *key order*, the
    order of the nonzeros of the aggregation operator ``A`` (edges sorted by
    ``key``). Per-edge values that feed ``A`` (normalisation times edge
    weights) are kept in key order so a layer never permutes them.

    Attributes:
        num_nodes: ``N``.
        num_relations: ``R``.
        src: int64 ``(E,)`` source node of each edge.
        dst: int64 ``(E,)`` destination node of each edge.
        key_perm: int64 ``(E,)`` edges sorted by ``key = dst * R + edge_type``, the (node,
            relation) slot each message lands in (hence sorted by ``dst``).
        key_crow: ``(N*R + 1,)`` row pointers of the aggregation operator ``A`` ``(N*R, N)``.
        key_col: ``(E,)`` column (source node) of each nonzero of ``A``.
        src_crow: ``(N + 1,)`` row pointers of anything whose rows are source nodes.
        src_col: ``(E,)`` ``key`` of each nonzero of ``A^T`` ``(N, N*R)``.
        dst_crow: ``(N + 1,)`` row pointers of the ``(N, E)`` destination-incidence matrix
            (its columns are ``key_perm``).
        t_perm: ``(E,)`` key-order position of each nonzero of ``A^T`` (of each :attr:`src_perm` edge).
        key_sorted: ``(E,)`` ``key`` in key order.
        norm_sorted: float32 ``(E,)`` the mean's factor in key order (:attr:`norm` is the
            same in edge order): ``1 / |N_r(dst)|`` (mean per relation) or ``1 / |N(dst)|``
            (mean over all relations, see :meth:`build`); zero for edges dropped by
            :meth:`dropout_undirected`.
        paired: edge ``e + E/2`` is edge ``e`` reversed (see :meth:`build`).
        mean_over: ``"relation"`` or ``"node"``, what :attr:`norm_sorted` averages over.

    Index tensors other than ``src``, ``dst`` and ``key_perm`` are int32 when
    every index fits (int64 otherwise): half the memory traffic of int64, and
    the CSR kernels take them as they are.
    """

    num_nodes: int
    num_relations: int
    src: torch.Tensor
    dst: torch.Tensor
    key_perm: torch.Tensor
    key_crow: torch.Tensor
    key_col: torch.Tensor
    src_crow: torch.Tensor
    src_col: torch.Tensor
    dst_crow: torch.Tensor
    t_perm: torch.Tensor
    key_sorted: torch.Tensor
    norm_sorted: torch.Tensor
    paired: bool = False
    mean_over: str = "relation"
    # Structure-only derived tensors (see :meth:`scorer_rows`, :attr:`src_perm`, ...), built on first
    # use. :meth:`dropout_undirected` changes operator values, never structure, so the graphs it
    # returns share this cache.
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        edge_index: torch.Tensor,
        edge_type: torch.Tensor,
        num_nodes: int,
        num_relations: int,
        *,
        paired: bool = False,
        mean_over: str = "relation",
    ) -> RelationalGraph:
        """Sort the edges of a typed graph into the operators the layers use.

        Args:
            edge_index: int64 ``(2, E)`` (source, destination).
            edge_type: int64 ``(E,)`` relation of each edge, in ``[0, num_relations)``.
            num_nodes: ``N``.
            num_relations: ``R``.
            paired: the edges come in reverse pairs laid out in halves: edge
                ``e + E/2`` is edge ``e`` reversed, with the same type (the
                :func:`~cmcrec.graph.subgraph.extract_subgraphs` layout). The
                transpose then follows from the key sort without a second sort,
                and :meth:`dropout_undirected` is available. Checked; a
                ``ValueError`` says when the edges are not laid out so.
            mean_over: how messages are averaged. ``"relation"``: over each
                (node, relation) slot, ``Σ_r mean_{j ∈ N_r(i)}`` (PyG >= 2's
                ``RGCNConv``); a node's count of each rating level is lost.
                ``"node"``: over all of the node's edges, ``Σ_r Σ_{j ∈ N_r(i)} / |N(i)|``
                (PyG 1.x's ``RGCNConv`` aggregated over all of a node's edges at
                once; IGMC's README names PyG 1.4.2); the first layer then sees the
                share of each rating level.
        """
        if mean_over not in ("relation", "node"):
            raise ValueError(f"mean_over must be 'relation' or 'node', got {mean_over!r}")
        src, dst = edge_index[0], edge_index[1]
        num_edges = int(src.numel())
        slots = num_nodes * num_relations
        # int32 when every index fits, the scorers' ``N + dst`` bags included.
        idx = torch.int32 if max(slots, num_edges, 2 * num_nodes) <= _INT32_MAX else torch.int64
        kernels = _fused_kernels(edge_index, edge_type) if paired and edge_index.dtype == torch.int64 else None
        if kernels is not None:  # one counting sort (cmcrec.models.kernels); the same arrays
            ok, *parts = kernels.paired_graph_build(
                src, dst, edge_type, num_nodes, num_relations, mean_over == "node", idx
            )
            if not ok:
                raise _not_paired(num_edges)
            key_perm, key_crow, key_col, src_crow, src_col, dst_crow, t_perm, key_sorted, norm_sorted, position = parts
        else:
            key = dst.to(idx) * num_relations + edge_type.to(idx)  # (E,)
            key_perm = torch.sort(_narrow_keys(key, slots, idx), stable=True).indices
            key_sorted = key.index_select(0, key_perm)
            key_col = src.to(idx).index_select(0, key_perm)
            key_counts = torch.bincount(key, minlength=slots)
            dst_counts = key_counts.view(num_nodes, num_relations).sum(1)
            if paired:
                half = num_edges // 2
                if num_edges % 2 or not (
                    torch.equal(src[:half], dst[half:])
                    and torch.equal(dst[:half], src[half:])
                    and torch.equal(edge_type[:half], edge_type[half:])
                ):
                    raise _not_paired(num_edges)
                # A^T's rows are sources; the reverse of the edge at key position p has source dst_sorted[p],
                # so the reverses of the key order are already sorted by source: A^T's p-th nonzero is the
                # reverse of A's p-th, and its key position is the inverse permutation read at the reverse.
                position = torch.empty(num_edges, dtype=idx, device=src.device)  # key position of each edge
                position.scatter_(0, key_perm, torch.arange(num_edges, dtype=idx, device=src.device))
                t_perm = torch.cat([position[half:], position[:half]]).index_select(0, key_perm)
                src_counts = dst_counts
            else:
                t_perm = torch.sort(key_col, stable=True).indices.to(idx)
                src_counts = torch.bincount(src, minlength=num_nodes)
            # 1 / |N_r(dst)| per slot (or 1 / |N(dst)| per node), then read per edge (a gather of E floats,
            # no E-long division).
            if mean_over == "relation":
                norm_sorted = key_counts.to(torch.float32).clamp_(min=1).reciprocal_().index_select(0, key_sorted)
            else:
                per_node = dst_counts.to(torch.float32).clamp_(min=1).reciprocal_()
                norm_sorted = per_node.repeat_interleave(dst_counts, output_size=num_edges)
            key_crow, src_crow, dst_crow = (_crow(c, idx) for c in (key_counts, src_counts, dst_counts))
            src_col = key_sorted.index_select(0, t_perm)
        return cls(
            num_nodes=num_nodes,
            num_relations=num_relations,
            src=src,
            dst=dst,
            key_perm=key_perm,
            key_crow=key_crow,
            key_col=key_col,
            src_crow=src_crow,
            src_col=src_col,
            dst_crow=dst_crow,
            t_perm=t_perm,
            key_sorted=key_sorted,
            norm_sorted=norm_sorted,
            paired=paired,
            mean_over=mean_over,
            _cache={"key_position": position} if paired else {},
        )

    @property
    def num_edges(self) -> int:
        return int(self.src.numel())

    def _cached(self, name: str, make) -> torch.Tensor:
        value = self._cache.get(name)
        if value is None:
            value = self._cache[name] = make()
        return value

    @property
    def src_perm(self) -> torch.Tensor:
        """int64 ``(E,)`` edges sorted by source: the edge of each nonzero of ``A^T`` (built on first use)."""

        def make() -> torch.Tensor:
            if not self.paired:
                return self.key_perm.index_select(0, self.t_perm)
            half = self.num_edges // 2
            return torch.where(self.key_perm >= half, self.key_perm - half, self.key_perm + half)  # the reverses

        return self._cached("src_perm", make)

    @property
    def dst_sorted(self) -> torch.Tensor:
        """``(E,)`` ``dst`` in key order (built on first use)."""
        return self._cached("dst_sorted", lambda: torch.div(self.key_sorted, self.num_relations, rounding_mode="floor"))

    @property
    def key_position(self) -> torch.Tensor:
        """``(E,)`` key-order position of each edge, in edge order (``key_perm``'s inverse; built on first use)."""

        def make() -> torch.Tensor:
            e = self.num_edges
            out = torch.empty(e, dtype=self.key_crow.dtype, device=self.src.device)
            return out.scatter_(0, self.key_perm, torch.arange(e, dtype=out.dtype, device=out.device))

        return self._cached("key_position", make)

    @property
    def key_half(self) -> torch.Tensor:
        """int64 ``(E,)`` ``key_perm mod E/2``: the rating of each key-order edge of a paired graph."""
        if not self.paired:
            raise ValueError("key_half needs a graph built with paired=True")
        half = self.num_edges // 2
        return self._cached("key_half", lambda: torch.where(self.key_perm < half, self.key_perm, self.key_perm - half))

    @property
    def norm(self) -> torch.Tensor:
        """float32 ``(E,)`` :attr:`norm_sorted` in the caller's edge order."""
        return torch.empty_like(self.norm_sorted).index_put_((self.key_perm,), self.norm_sorted)

    def dropout_undirected(self, p: float, generator: torch.Generator | None = None) -> RelationalGraph:
        """The same graph with each undirected edge (both directions together) dropped with probability ``p``.

        Dropping is done on the operator values, without re-sorting: a dropped
        edge's value becomes 0 and the counts the mean divides by (``|N_r(i)|``
        or ``|N(i)|``) are recounted over the kept edges, which is exactly the operator of the
        graph with the dropped edges removed. Needs a ``paired`` graph.

        Args:
            p: drop probability in ``[0, 1)``.
            generator: random generator; torch's global one when ``None``.
        """
        if not self.paired:
            raise ValueError("dropout_undirected needs a graph built with paired=True")
        half = self.num_edges // 2
        keep_half = torch.rand(half, generator=generator, device=self.src.device) >= p
        per_slot = self.mean_over == "relation"
        kernels = _fused_kernels(self.key_perm)
        if kernels is not None:  # one pass per slot or node (cmcrec.models.kernels); the same values
            crow = self.key_crow if per_slot else self.dst_crow
            return replace(self, norm_sorted=kernels.paired_dropout_norm(keep_half, self.key_perm, crow))
        keep_sorted = keep_half.index_select(0, self.key_half)  # (E,) both directions of a rating alike
        # Kept edges per slot (or per node): key order is slot order and node order, so a running
        # count read at the row pointers.
        crow, group = (self.key_crow, self.key_sorted) if per_slot else (self.dst_crow, self.dst_sorted)
        running = crow.new_zeros(self.num_edges + 1)
        torch.cumsum(keep_sorted, 0, out=running[1:])
        at = running.index_select(0, crow)
        counts = (at[1:] - at[:-1]).clamp_(min=1)
        norm_sorted = counts.to(torch.float32).reciprocal_().index_select(0, group).mul_(keep_sorted)
        return replace(self, norm_sorted=norm_sorted)

    def scorer_rows(self, per_rating: bool) -> ScorerRows:
        """The rows an edge scorer computes on, and how to gather into and scatter out of them.

        Args:
            per_rating: one row per undirected edge (rating), the first half of a
                ``paired`` graph's edges in edge order, its weight shared by both
                directions; otherwise one row per directed edge, in key order.
        """
        key = "rating" if per_rating else "directed"
        rows = self._cache.get(key)
        if rows is not None:
            return rows
        n = self.num_nodes
        idx = self.key_crow.dtype
        if not per_rating:
            e = self.num_edges
            rows = ScorerRows(
                src=self.key_col,
                dst=self.dst_sorted,
                src_crow=self.src_crow,
                src_col=self.t_perm,
                dst_crow=self.dst_crow,
                dst_col=torch.arange(e, dtype=idx, device=self.src.device),
                pairs=torch.stack([self.key_col, self.dst_sorted + n], 1),
                to_key=None,
            )
        else:
            if not self.paired:
                raise ValueError("per-rating edge scores need a graph built with paired=True")
            half = self.num_edges // 2
            src, dst = self.src[:half], self.dst[:half]
            kernels = _fused_kernels(self.src, self.dst, self.key_perm)
            if kernels is not None:  # one pass over the ratings and one over the key order; the same arrays
                src_crow, src_col, dst_crow, dst_col, pairs, key_half = kernels.paired_scorer_rows(
                    self.src, self.dst, self.key_perm, n, idx
                )
                self._cache.setdefault("key_half", key_half)
            else:
                # Key order groups edges by destination. Its first-half edges are the ratings grouped by
                # their destination; its second-half edges are the reversed ratings, grouped by the
                # destination of the reverse, i.e. by the rating's source.
                first = self.key_perm < half
                if bool((src[1:] >= src[:-1]).all()):  # ratings already grouped by source (extract_subgraphs)
                    src_col = torch.arange(half, dtype=idx, device=src.device)
                else:
                    src_col = self.key_perm.index_select(0, _nonzero(~first)).sub_(half).to(idx)
                src_crow = _crow(torch.bincount(src, minlength=n), idx)
                dst_crow = _crow(torch.bincount(dst, minlength=n), idx)
                dst_col = self.key_perm.index_select(0, _nonzero(first)).to(idx)
                pairs = torch.stack([src, dst + n], 1).to(idx)
            rows = ScorerRows(
                src=src,
                dst=dst,
                src_crow=src_crow,
                src_col=src_col,
                dst_crow=dst_crow,
                dst_col=dst_col,
                pairs=pairs,
                to_key=self.key_half,
                key_position=self.key_position,
            )
        self._cache[key] = rows
        return rows

    def transposed_values(self, value: torch.Tensor) -> torch.Tensor:
        """Key-order ``value`` ``(E,)`` in the order of ``A^T``'s nonzeros (``value[t_perm]``).

        Remembered for the last ``value`` tensor asked for: the layers of a stack
        without edge scorers share one, so their backwards permute it once.
        """
        last = self._cache.get("transposed")
        if last is not None and last[0]() is value and last[1] == value._version:
            return last[2]
        out = value.index_select(0, self.t_perm)
        # A weak reference: a strong one could keep ``value``'s autograd graph, and through it this
        # graph, alive in a cycle the garbage collector cannot see.
        self._cache["transposed"] = (weakref.ref(value), value._version, out)
        return out

    def target_rows(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The nonzeros of ``A``'s rows for ``nodes`` (all their relations).

        Returns:
            ``(row, pos)``: int64 ``(E_T,)`` row of each nonzero in the ``(T*R, N)``
            sub-operator of ``nodes`` and int64 ``(E_T,)`` its key-order position.
        """
        r = self.num_relations
        slot = (nodes.unsqueeze(1) * r + torch.arange(r, device=nodes.device)).reshape(-1)  # (T*R,)
        start = self.key_crow.index_select(0, slot).long()
        length = self.key_crow.index_select(0, slot + 1).long() - start
        row = torch.repeat_interleave(torch.arange(slot.numel(), device=nodes.device), length)
        first = torch.cumsum(length, 0) - length  # offset of each row's run in the output
        pos = start.index_select(0, row) + torch.arange(row.numel(), device=nodes.device) - first.index_select(0, row)
        return row, pos


class _Aggregate(torch.autograd.Function):
    """``out[k] = Σ_{e: key_e = k} value_e · x[src_e]``, i.e. ``A @ x`` with ``A`` ``(N*R, N)``.

    ``value`` is in key order (see :class:`RelationalGraph`).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, value: torch.Tensor, graph: RelationalGraph) -> torch.Tensor:
        dtype = _compute_dtype(x)
        x = x.to(dtype)
        value = value.to(dtype)
        n, r = graph.num_nodes, graph.num_relations
        a = _csr(graph.key_crow, graph.key_col, value, (n * r, n))
        ctx.save_for_backward(x, value)
        ctx.graph = graph
        return _spmm(a, x)  # (N*R, C)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, value = ctx.saved_tensors
        graph: RelationalGraph = ctx.graph
        grad = grad.contiguous().to(x.dtype)
        grad_x = grad_value = None
        n, r = graph.num_nodes, graph.num_relations
        if ctx.needs_input_grad[0]:
            at = _csr(graph.src_crow, graph.src_col, graph.transposed_values(value), (n, n * r))
            grad_x = _spmm(at, grad)  # (N, C)
        if ctx.needs_input_grad[1]:
            # d loss / d value_e = <grad[key_e], x[src_e]>: (grad @ x^T) sampled at A's pattern, in key order.
            pattern = _csr(graph.key_crow, graph.key_col, value.new_zeros(value.numel()), (n * r, n))
            grad_value = torch.sparse.sampled_addmm(pattern, grad, x.T, beta=0.0).values()
        return grad_x, grad_value, None


def _aggregate_rows(x: torch.Tensor, value: torch.Tensor, graph: RelationalGraph, nodes: torch.Tensor):
    """The rows of ``A @ x`` for ``nodes`` only: ``(T*R, C)``. Plain autograd (few edges)."""
    row, pos = graph.target_rows(nodes)
    col = graph.key_col.index_select(0, pos)
    msg = x.index_select(0, col) * value.index_select(0, pos).to(x.dtype).unsqueeze(1)  # (E_T, C)
    out = x.new_zeros(nodes.numel() * graph.num_relations, x.shape[1])
    return out.index_add(0, row, msg)


class _Gather(torch.autograd.Function):
    """``x[index]`` whose backward is a CSR product instead of ``index_add_``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, crow: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(crow, col)
        ctx.num_nodes = x.shape[0]
        ctx.dtype = x.dtype
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        crow, col = ctx.saved_tensors
        dtype = _compute_dtype(grad)
        grad = grad.contiguous().to(dtype)
        return _incidence_sum(crow, col, grad, ctx.num_nodes).to(ctx.dtype), None, None, None


def _to_edge_order(sorted_values: torch.Tensor, graph: RelationalGraph) -> torch.Tensor:
    """Key-order values back in the caller's edge order (differentiable)."""
    return torch.zeros_like(sorted_values).index_put((graph.key_perm,), sorted_values)


def gather_rows(x: torch.Tensor, graph: RelationalGraph | None, which: str, edge_index=None) -> torch.Tensor:
    """Per-edge rows of node features: ``x[src]`` (``which="src"``) or ``x[dst]`` (``"dst"``).

    Args:
        x: ``(N, C)`` node features.
        graph: the batch's :class:`RelationalGraph`; ``None`` falls back to plain
            indexing of ``edge_index`` (slower backward on CPU).
        which: ``"src"`` or ``"dst"``.
        edge_index: ``(2, E)``; only read when ``graph`` is ``None``.

    Returns:
        ``(E, C)``.
    """
    row = 0 if which == "src" else 1
    if graph is None:
        return x.index_select(0, edge_index[row])
    if which == "src":
        return _Gather.apply(x, graph.src, graph.src_crow, graph.src_perm.to(graph.src_crow.dtype))
    return _Gather.apply(x, graph.dst, graph.dst_crow, graph.key_perm.to(graph.dst_crow.dtype))


class RGCNConv(nn.Module):
    r"""Relational graph convolution with basis decomposition (Schlichtkrull et al., 2018, eq. 2-3).

    .. math::
        h_i = W_0 x_i + b + \sum_{r} \sum_{j \in N_r(i)} \frac{w_{ji}}{|N_r(i)|} W_r x_j,
        \qquad W_r = \sum_{b} a_{rb} V_b

    ``|N_r(i)|`` counts the in-edges of node ``i`` of relation ``r`` (edge weights
    do not enter the count, so a weight scales its message rather than being
    normalised away); ``w_{ji} = 1`` when no edge weights are given. That is the
    graph this layer builds for itself; a :class:`RelationalGraph` built with
    ``mean_over="node"`` and passed in as ``graph`` divides by ``|N(i)|``, all of
    ``i``'s in-edges, instead.

    Args:
        in_channels: input width ``C_in``.
        out_channels: output width ``C_out``.
        num_relations: number of edge types ``R``.
        num_bases: number of basis matrices ``V_b``.
        root_weight: add the self-loop term ``W_0 x_i``.
        bias: add a learned bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_relations: int,
        num_bases: int,
        root_weight: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_relations = num_relations
        self.num_bases = num_bases
        self.basis = nn.Parameter(torch.empty(num_bases, in_channels, out_channels))
        self.comp = nn.Parameter(torch.empty(num_relations, num_bases))
        if root_weight:
            self.root = nn.Parameter(torch.empty(in_channels, out_channels))
        else:
            self.register_parameter("root", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = math.sqrt(6.0 / (self.in_channels + self.out_channels))
        nn.init.uniform_(self.basis, -bound, bound)
        # Glorot-uniform mixing weights, symmetric about 0 (as PyG's RGCNConv). Positive-only ones
        # (every relation a blend of the bases) started the relations alike and cost IGMC 0.015
        # validation and test RMSE at the public ML-100K settings (5 epochs, seeds 0-2).
        bound_comp = math.sqrt(6.0 / (self.num_relations + self.num_bases))
        nn.init.uniform_(self.comp, -bound_comp, bound_comp)
        if self.root is not None:
            nn.init.uniform_(self.root, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def relation_weight(self) -> torch.Tensor:
        """The per-relation matrices ``W_r = Σ_b a_rb V_b``: ``(R, C_in, C_out)``."""
        w = self.comp @ self.basis.view(self.num_bases, -1)  # (R, C_in * C_out)
        return w.view(self.num_relations, self.in_channels, self.out_channels)

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_type: torch.Tensor,
        edge_weight: torch.Tensor | None = None,
        *,
        graph: RelationalGraph | None = None,
    ) -> torch.Tensor:
        """Convolve.

        Args:
            x: ``(N, C_in)`` node features.
            edge_index: int64 ``(2, E)`` (source, destination).
            edge_type: int64 ``(E,)`` relation of each edge.
            edge_weight: optional ``(E,)`` multiplier of each message; differentiable.
            graph: the :class:`RelationalGraph` of ``(edge_index, edge_type)``, when the
                caller already built it (a stack shares one); built here otherwise.

        Returns:
            ``(N, C_out)``.
        """
        if graph is None:
            graph = RelationalGraph.build(edge_index, edge_type, x.shape[0], self.num_relations)
        value = graph.norm_sorted.to(_compute_dtype(x))
        if edge_weight is not None:
            value = value * edge_weight.index_select(0, graph.key_perm)
        return self.propagate(x, value, graph)

    def propagate(
        self, x: torch.Tensor, value: torch.Tensor, graph: RelationalGraph, nodes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The convolution with the operator's values given in key order.

        Args:
            x: ``(N, C_in)`` node features.
            value: ``(E,)`` ``norm_e * w_e`` in key order (see :class:`RelationalGraph`).
            graph: the operators.
            nodes: compute only these nodes' outputs (``(T,)``); all nodes when ``None``.

        Returns:
            ``(N, C_out)``, or ``(T, C_out)`` with ``nodes``.
        """
        if nodes is None:
            agg = _Aggregate.apply(x, value, graph)  # (N*R, C_in)
            self_x = x
        else:
            agg = _aggregate_rows(x, value, graph, nodes)  # (T*R, C_in)
            self_x = x.index_select(0, nodes)
        w = self.relation_weight().reshape(self.num_relations * self.in_channels, self.out_channels)
        out = agg.view(-1, self.num_relations * self.in_channels).to(w.dtype) @ w  # (N or T, C_out)
        if self.root is not None:
            out = out + self_x @ self.root
        if self.bias is not None:
            out = out + self.bias
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
            f"num_relations={self.num_relations}, num_bases={self.num_bases})"
        )


class _EdgeSum(torch.autograd.Function):
    """``a[src_m] + b[dst_m]`` for every scorer row: ``(M, H)``; the backward is two CSR products."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, rows: ScorerRows) -> torch.Tensor:
        ctx.rows = rows
        ctx.num_nodes = a.shape[0]
        return rows.gather_sum(a, b)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dtype = _compute_dtype(grad)
        grad_a, grad_b = ctx.rows.scatter(grad.contiguous().to(dtype), ctx.num_nodes)
        return grad_a, grad_b, None


class _EdgeMLP(torch.autograd.Function):
    """``v · relu(a[src_m] + b[dst_m])`` for every scorer row: ``(M,)``.

    On CPU in float32/float64 the fused kernels of :mod:`cmcrec.models.kernels`
    do each direction in one pass over the rows, with no ``(M, H)`` buffer.
    Otherwise (GPU, half precision, kernels unavailable) one ``(M, H)`` buffer
    is built (a fused gather-add, then ReLU in place) and kept for the
    backward, whose scatters to ``a`` and ``b`` are CSR products with
    pre-sorted incidence patterns instead of ``index_add_``, with ``v``
    factored out of them: ``Σ_m 1[h_m > 0] g_m v = v ⊙ Σ_m 1[h_m > 0] g_m``, so
    no ``g ⊗ v`` buffer is built.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, v: torch.Tensor, rows: ScorerRows) -> torch.Tensor:
        ctx.rows = rows
        ctx.num_nodes = a.shape[0]
        ctx.kernels = kernels = _fused_kernels(a, b, v)
        if kernels is not None:
            ctx.save_for_backward(a, b, v)
            return kernels.edge_mlp_forward(a, b, v, rows.pairs)
        hid = rows.gather_sum(a, b).relu_()  # (M, H)
        ctx.save_for_backward(hid, v)
        return hid @ v

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows: ScorerRows = ctx.rows
        if ctx.kernels is not None:
            a, b, v = ctx.saved_tensors
            grad_a, grad_b, grad_v = ctx.kernels.edge_mlp_backward(
                grad, a, b, v, rows.pairs, rows.src_crow, rows.src_col, rows.dst_crow, rows.dst_col
            )
            return grad_a, grad_b, grad_v, None
        hid, v = ctx.saved_tensors
        dtype = _compute_dtype(hid)
        hid = hid.to(dtype)  # half-precision under autocast: the backward runs in float32
        grad = grad.contiguous().to(dtype)
        grad_v = hid.T @ grad  # (H,)
        # d/d pre = 1[pre > 0] · grad_m (times v, applied after the scatter). ``hid`` is a ReLU output,
        # so its sign is that indicator: two contiguous passes, several times faster on CPU than
        # ReLU's backward kernel reading a broadcast gradient.
        masked = hid.sign().mul_(grad.unsqueeze(1))  # (M, H)
        grad_a, grad_b = rows.scatter(masked, ctx.num_nodes)
        v = v.to(dtype)
        return grad_a.mul_(v), grad_b.mul_(v), grad_v, None


def _not_paired(num_edges: int) -> ValueError:
    return ValueError(
        "paired=True needs edge e + E/2 to be edge e reversed with the same type "
        f"(the extract_subgraphs layout); got {num_edges} edges that are not laid out so"
    )


def _fused_kernels(*tensors: torch.Tensor):
    """The compiled CPU kernels when they apply to ``tensors`` (CPU, one dtype: float32, float64 or int64),
    else ``None``."""
    t = tensors[0]
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64, torch.int64):
        return None
    if any(x.device.type != "cpu" or x.dtype != t.dtype for x in tensors):
        return None
    from cmcrec.models.kernels import cpu_kernels

    return cpu_kernels()


class EdgeScorer(nn.Module):
    r"""Weights every edge from its endpoints' representations (MCCL view 1's denoiser).

    The score is a one-hidden-layer MLP on ``[h_src ‖ h_dst]``, computed as
    ``σ(v · relu(W_s h_src + W_d h_dst + b) + c)``: the two halves of the first
    layer are applied once per node and gathered per edge, which equals the MLP
    on the concatenation without building an ``(E, 2C)`` tensor.

    With ``per_rating`` (needs the paired layout of
    :func:`~cmcrec.graph.subgraph.extract_subgraphs`: edge ``e + E/2`` is edge
    ``e`` reversed) a rating is scored once, on ``[h_user ‖ h_item]`` (the
    orientation of the first half of the edges), and both directions of the
    rating carry that weight: an edge of the rating graph is a rating, and it
    is the rating that is noisy or not. It also halves the scorer's work.
    Otherwise each direction is scored on its own ``[h_src ‖ h_dst]``.

    :meth:`forward` then rescales within each subgraph so the weights of a
    graph's edges average exactly 1: ``w_e = s_e / mean_{e' ∈ g(e)} s_{e'}``.
    Weights are positive and a graph's total message mass matches the
    unweighted graph; only its distribution over edges changes.

    Args:
        channels: width of the node representations.
        hidden: width of the MLP's hidden layer; 0 for a linear scorer.
        per_rating: one score per rating shared by its two directions.
    """

    def __init__(self, channels: int, hidden: int, per_rating: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.hidden = hidden
        self.per_rating = per_rating
        if hidden == 0:
            # Linear scorer: one scalar per endpoint, no hidden layer.
            self.lin_src = nn.Linear(channels, 1)
            self.lin_dst = nn.Linear(channels, 1, bias=False)
            self.lin_out = None
        else:
            self.lin_src = nn.Linear(channels, hidden)
            self.lin_dst = nn.Linear(channels, hidden, bias=False)
            self.lin_out = nn.Linear(hidden, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_src.reset_parameters()
        self.lin_dst.reset_parameters()
        if self.lin_out is not None:
            self.lin_out.reset_parameters()

    def _raw(self, hs: torch.Tensor, hd: torch.Tensor) -> torch.Tensor:
        """Scores from already gathered endpoint projections ``(M, H)``."""
        if self.lin_out is None:
            return torch.sigmoid((hs + hd).squeeze(-1))
        return torch.sigmoid(self.lin_out(torch.relu(hs + hd)).squeeze(-1))

    def score(self, x: torch.Tensor, edge_index: torch.Tensor, graph: RelationalGraph | None = None) -> torch.Tensor:
        """Raw scores in ``(0, 1)``: ``(E,)``, in edge order."""
        if graph is not None:
            s = self.score_rows(x, graph)
            return torch.cat([s, s]) if self.per_rating else _to_edge_order(s, graph)
        if self.per_rating:
            half = _paired_half(edge_index)
            src, dst = edge_index[0, :half], edge_index[1, :half]
        else:
            src, dst = edge_index[0], edge_index[1]
        s = self._raw(self.lin_src(x).index_select(0, src), self.lin_dst(x).index_select(0, dst))
        return torch.cat([s, s]) if self.per_rating else s

    def score_rows(self, x: torch.Tensor, graph: RelationalGraph) -> torch.Tensor:
        """Raw scores in ``(0, 1)`` of the rows of :meth:`RelationalGraph.scorer_rows`: ``(M,)``."""
        rows = graph.scorer_rows(self.per_rating)
        if self.lin_out is None:
            return torch.sigmoid(_EdgeSum.apply(self.lin_src(x), self.lin_dst(x), rows).squeeze(-1))
        logit = _EdgeMLP.apply(self.lin_src(x), self.lin_dst(x), self.lin_out.weight.view(-1), rows)
        return torch.sigmoid(logit + self.lin_out.bias)

    def weights_rows(
        self, x: torch.Tensor, graph: RelationalGraph, row_graph: torch.Tensor, row_count: torch.Tensor
    ) -> torch.Tensor:
        """Scores rescaled to mean 1 within each subgraph, per scorer row.

        Args:
            x: ``(N, C)`` node representations.
            graph: the batch's operators.
            row_graph: int64 ``(M,)`` subgraph of each scorer row.
            row_count: ``(B,)`` scorer rows per subgraph (as ``x``'s dtype, at least 1).

        Returns:
            ``(M,)`` positive weights (:func:`scorer_values` computes the same from the raw scores,
            straight into the operator's key-order values).
        """
        s = self.score_rows(x, graph)
        total = s.new_zeros(row_count.numel()).index_add(0, row_graph, s)  # (B,)
        return s * (row_count / total).index_select(0, row_graph)

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        node_graph: torch.Tensor,
        num_graphs: int,
        graph: RelationalGraph | None = None,
    ) -> torch.Tensor:
        """Scores rescaled to mean 1 within each subgraph.

        Args:
            x: ``(N, C)`` node representations.
            edge_index: int64 ``(2, E)``.
            node_graph: int64 ``(N,)`` subgraph of each node.
            num_graphs: ``B``.
            graph: optional prebuilt :class:`RelationalGraph` (faster).

        Returns:
            ``(E,)`` positive weights, in edge order.
        """
        if graph is not None:
            row_graph, count, _ = _row_groups(graph.scorer_rows(self.per_rating), node_graph, num_graphs, x.dtype)
            w = self.weights_rows(x, graph, row_graph, count)
            return torch.cat([w, w]) if self.per_rating else _to_edge_order(w, graph)
        s = self.score(x, edge_index)
        edge_graph = node_graph[edge_index[0]]  # (E,)
        total = s.new_zeros(num_graphs).index_add(0, edge_graph, s)
        count = torch.bincount(edge_graph, minlength=num_graphs).clamp_(min=1).to(s.dtype)
        return s / (total / count).index_select(0, edge_graph)

    def __repr__(self) -> str:
        rating = ", per_rating=True" if self.per_rating else ""
        return f"{type(self).__name__}({self.channels}, hidden={self.hidden}{rating})"


def _row_groups(
    rows: ScorerRows, node_graph: torch.Tensor, num_graphs: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Subgraph of each scorer row ``(M,)``, rows per subgraph ``(B,)`` (at least 1, as ``dtype``),
    and, when the rows come grouped by subgraph in order (as extracted batches' do), the int64
    run lengths ``(B,)`` for :func:`scorer_values`' segment sums (``None`` otherwise)."""
    row_graph = node_graph.index_select(0, rows.dst)
    counts = torch.bincount(row_graph, minlength=num_graphs)
    runs = counts if bool((row_graph[1:] >= row_graph[:-1]).all()) else None
    return row_graph, counts.clamp(min=1).to(dtype), runs


def _paired_half(edge_index: torch.Tensor) -> int:
    """``E/2`` of a paired edge list (edge ``e + E/2`` is edge ``e`` reversed); ``ValueError`` otherwise."""
    e = edge_index.shape[1]
    half = e // 2
    if e % 2 or not torch.equal(edge_index[:, :half], edge_index.flip(0)[:, half:]):
        raise ValueError("per-rating edge scores need edge e + E/2 to be edge e reversed (extract_subgraphs layout)")
    return half


class RGCNStack(nn.Module):
    """``L`` R-GCN layers with tanh; a node's representation is all layers' outputs concatenated.

    With ``scorer_hidden`` set, an :class:`EdgeScorer` after each layer but the
    last weights the edges for the next layer (MCCL's denoised view);
    otherwise every message has weight 1 (IGMC, MCCL's augmented view).

    Args:
        in_channels: width of the input node features.
        hidden_channels: width of every layer.
        num_layers: ``L``.
        num_relations: edge types.
        num_bases: basis matrices per layer.
        scorer_hidden: hidden width of the edge scorers; ``None`` for no scorers.
        scorer_per_rating: score each rating once for both its directions
            (:class:`EdgeScorer`'s ``per_rating``; needs a paired graph).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        num_layers: int,
        num_relations: int,
        num_bases: int,
        scorer_hidden: int | None = None,
        scorer_per_rating: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.convs = nn.ModuleList(
            RGCNConv(in_channels if k == 0 else hidden_channels, hidden_channels, num_relations, num_bases)
            for k in range(num_layers)
        )
        self.scorer_per_rating = scorer_per_rating
        if scorer_hidden is None:
            self.scorers = None
        else:
            self.scorers = nn.ModuleList(
                EdgeScorer(hidden_channels, scorer_hidden, scorer_per_rating) for _ in range(num_layers - 1)
            )

    @property
    def out_channels(self) -> int:
        return self.hidden_channels * self.num_layers

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_type: torch.Tensor,
        graph: RelationalGraph,
        node_graph: torch.Tensor | None = None,
        num_graphs: int | None = None,
        nodes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Node representations ``(N, L * hidden_channels)``, or ``(T, L * hidden_channels)`` of ``nodes``.

        ``node_graph`` and ``num_graphs`` are needed only with edge scorers.
        With ``nodes`` (e.g. the target users and items, ``(T,)``) only those
        nodes' representations are returned, and the last layer is computed
        for them alone: every other node's last-layer output would be
        discarded, so the result equals the rows of the full computation.
        """
        value = graph.norm_sorted.to(_compute_dtype(x))  # (E,) key order
        norm = value
        if self.scorers:  # None, or no scorers with a single layer
            rows = graph.scorer_rows(self.scorer_per_rating)
            row_graph, count, runs = _row_groups(rows, node_graph, num_graphs, value.dtype)  # (M,), (B,), (B,)
        outs = []
        last = len(self.convs) - 1
        for k, conv in enumerate(self.convs):
            if k == last and nodes is not None:
                outs = [o.index_select(0, nodes) for o in outs]
                outs.append(torch.tanh(conv.propagate(x, value, graph, nodes)))  # (T, C)
                break
            x = torch.tanh(conv.propagate(x, value, graph))  # (N, C)
            outs.append(x)
            if self.scorers and k < len(self.scorers):
                s = self.scorers[k].score_rows(x, graph)  # (M,)
                value = scorer_values(s, norm, rows, row_graph, count, runs)
        return torch.cat(outs, dim=-1)


def mlp_head(in_channels: int, hidden: int, dropout: float) -> nn.Sequential:
    """Linear → ReLU → Dropout → Linear(·, 1): a rating head (IGMC's)."""
    return nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))


def dropout_edges_undirected(edge_index: torch.Tensor, p: float, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop each undirected edge (both directions together) with probability ``p``.

    Assumes every edge is present in both directions (the
    :class:`~cmcrec.graph.batch.SubgraphBatch` contract): the direction with
    ``src < dst`` is sampled and the kept ones are mirrored. Uses torch's
    global RNG. Edge order changes (kept forward edges, then their reverses).

    Args:
        edge_index: int64 ``(2, E)``.
        p: drop probability in ``[0, 1)``.
        *tensors: edge-aligned tensors (``edge_type``, ``edge_value``, ...) to keep in step.

    Returns:
        ``(edge_index, *tensors)`` of the kept edges.
    """
    forward_edges = (edge_index[0] < edge_index[1]).nonzero().squeeze(1)
    keep = forward_edges[torch.rand(forward_edges.numel(), device=edge_index.device) >= p]
    kept = edge_index[:, keep]
    out_index = torch.cat([kept, kept.flip(0)], dim=1)
    return (out_index, *(torch.cat([t[keep], t[keep]]) for t in tensors))


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float, ids: torch.Tensor | None = None) -> torch.Tensor:
    r"""Symmetric InfoNCE between two views with in-batch negatives.

    ``S = cos(a_i, b_j) / τ`` ``(B, B)``; row ``i``'s positive is column ``i``:

    .. math::
        \mathcal{L} = \tfrac12 \big( \mathrm{CE}(S, \mathrm{diag}) + \mathrm{CE}(S^\top, \mathrm{diag}) \big)

    (mean over the batch; both directions, so neither view is the anchor).

    Args:
        a: ``(B, D)`` first view.
        b: ``(B, D)`` second view.
        tau: temperature ``τ > 0``.
        ids: ``(B,)`` or ``None``: what each row represents (a user or item
            index). Pairs ``i ≠ j`` with ``ids[i] == ids[j]`` are left out of
            both cross-entropies' denominators: the same user seen in two
            subgraphs is not its own negative. ``None``: every other row is one.

    Returns:
        Scalar loss.
    """
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau  # (B, B)
    labels = torch.arange(sim.shape[0], device=sim.device)
    if ids is not None:
        repeated = (ids[:, None] == ids[None, :]) & (labels[:, None] != labels[None, :])  # symmetric
        sim = sim.masked_fill(repeated, float("-inf"))
    return 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels))


def ranking_info_nce(score: torch.Tensor, rank_index: torch.Tensor, tau: float) -> torch.Tensor:
    r"""InfoNCE of a user's highly rated item against items the user has not rated.

    Row ``p`` of ``rank_index`` names one positive target (column 0) and
    ``m`` negatives of the same user (columns ``1..m``); with
    ``s_p = score[rank_index[p]] / τ``:

    .. math::
        \mathcal{L} = -\frac1P \sum_p \log \frac{e^{s_{p0}}}{\sum_{k=0}^{m} e^{s_{pk}}}

    i.e. a cross-entropy over each ``(1 + m)`` row with the positive as class 0.

    Args:
        score: ``(T,)`` a score per target pair (higher = ranked first).
        rank_index: int64 ``(P, 1 + m)`` target indices.
        tau: temperature ``τ > 0``.

    Returns:
        Scalar loss; 0 when ``P == 0``.
    """
    if rank_index.shape[0] == 0:
        return score.sum() * 0.0
    logits = score.index_select(0, rank_index.reshape(-1)).view(rank_index.shape) / tau  # (P, 1+m)
    return F.cross_entropy(logits, torch.zeros(rank_index.shape[0], dtype=torch.long, device=score.device))
