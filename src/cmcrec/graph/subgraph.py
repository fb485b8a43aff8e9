"""Enclosing-subgraph extraction (IGMC, Zhang & Chen, ICLR 2020), vectorised.

For a target pair ``(u, i)`` the ``h``-hop enclosing subgraph is grown by an
alternating breadth-first search from ``u`` and ``i`` over the training graph:

- hop 1: users who rated ``i`` (except ``u``) and items rated by ``u``
  (except ``i``);
- hop ``k > 1``: users who rated a hop-``(k-1)`` item and items rated by a
  hop-``(k-1)`` user, never a node already *seen* at an earlier hop.

As in IGMC, a node counts as seen as soon as it is a candidate, even when the
cap on the hop then drops it; so every node of a capped subgraph sits in the
uncapped subgraph with the same label. Each hop's new users and new items are
capped at ``max_nodes_per_hop``: a uniform random subset when a
``numpy.random.Generator`` is given (training), otherwise the candidates with
the smallest :func:`node_hash` of ``(target user, target item, candidate)``
(evaluation), so a pair's subgraph never depends on the rest of its batch.

The edges are every training rating between a selected user and a selected
item, in both directions, except the target rating ``(u, i)`` itself.

Everything is NumPy and PyTorch over the :class:`~cmcrec.graph.csr.RatingGraph`
arrays: the batch is processed at once, with a Python loop over hops only. The
largest step, scanning every rating of the selected users for items selected in
the same subgraph, runs as one compiled loop when the CPU kernels are built
(:mod:`cmcrec.models.kernels`; the PyTorch path gives the same batch otherwise).
"""

from __future__ import annotations

import numpy as np
import torch

from cmcrec.errors import CmcrecError
from cmcrec.graph.batch import SubgraphBatch
from cmcrec.graph.csr import RatingGraph

__all__ = ["extract_subgraphs", "extract_subgraphs_with_nodes", "node_hash"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)

# Edge membership uses a dense (B * num_items) lookup table up to this many
# entries (32 MiB of int32), and sorted-key binary search beyond it.
_DENSE_LOOKUP_MAX = 1 << 23


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # SplitMix64 (Steele, Lea & Flood 2014): uint64 arithmetic wraps mod 2**64.
    x = x + _GOLDEN
    x = (x ^ (x >> _S30)) * _MIX1
    x = (x ^ (x >> _S27)) * _MIX2
    return x ^ (x >> _S31)


def node_hash(target_user: np.ndarray, target_item: np.ndarray, node: np.ndarray) -> np.ndarray:
    """The deterministic sampling priority of ``node`` in the subgraph of a pair.

    ``splitmix64(splitmix64(splitmix64(u) ^ i) ^ node)`` in wrapping uint64
    arithmetic; when a hop has more candidates than the cap, the ones with the
    smallest hash (ties: smallest index) are kept.

    Args:
        target_user: int ``(n,)`` target user of each candidate.
        target_item: int ``(n,)`` target item of each candidate.
        node: int ``(n,)`` candidate user or item index.

    Returns:
        uint64 ``(n,)``.
    """
    h = _splitmix64(np.asarray(target_user, dtype=np.int64).astype(np.uint64))
    h = _splitmix64(h ^ np.asarray(target_item, dtype=np.int64).astype(np.uint64))
    return _splitmix64(h ^ np.asarray(node, dtype=np.int64).astype(np.uint64))


def _gather(indptr: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of all neighbour-list entries of ``nodes``, list after list.

    Returns:
        ``(pos, lens)``: int64 ``(sum(lens),)`` positions into the CSR arrays
        and int64 ``(len(nodes),)`` list lengths.
    """
    starts = indptr[nodes]
    lens = indptr[nodes + 1] - starts
    ends = np.cumsum(lens)
    pos = np.repeat(starts - ends + lens, lens)
    pos += np.arange(pos.shape[0], dtype=np.int64)
    return pos, lens


def _runs(
    starts: torch.Tensor, lens: torch.Tensor, seg_start: torch.Tensor, total: int, dtype: torch.dtype
) -> torch.Tensor:
    """``cat([arange(s, s + n) for s, n in zip(starts, lens)])`` as ``dtype`` ``(total,)``.

    One cumulative sum over ones, with each non-empty run's first entry
    replaced by the jump from the previous run's last value (``seg_start`` is
    ``cumsum(lens) - lens``, ``total`` is ``lens.sum()``).
    """
    out = torch.ones(total, dtype=dtype)
    nonempty = lens > 0
    s, n = starts[nonempty], lens[nonempty]
    jump = s.clone()
    jump[1:] -= s[:-1] + n[:-1] - 1
    out[seg_start[nonempty]] = jump.to(dtype)
    return torch.cumsum(out, 0, dtype=dtype)


def _repeat(
    values: torch.Tensor, lens: torch.Tensor, seg_start: torch.Tensor, total: int, dtype: torch.dtype
) -> torch.Tensor:
    """``repeat_interleave(values, lens)`` as ``dtype``: one cumulative sum over the
    differences between consecutive non-empty runs' values (several times faster on CPU)."""
    out = torch.zeros(total, dtype=dtype)
    nonempty = lens > 0
    v = values[nonempty]
    step = v.clone()
    step[1:] -= v[:-1]
    out[seg_start[nonempty]] = step.to(dtype)
    return torch.cumsum(out, 0, dtype=dtype)


def _scan_kernels():
    """The compiled CPU kernels for the ratings scan (:func:`extract_subgraphs_with_nodes`), or ``None``
    (disabled, or no build: the PyTorch path then runs, with the same result)."""
    from cmcrec.models.kernels import cpu_kernels

    return cpu_kernels()


def _in_sorted(keys: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Boolean mask of ``keys`` found in the ascending array ``ref``."""
    if ref.shape[0] == 0:
        return np.zeros(keys.shape[0], dtype=bool)
    at = np.searchsorted(ref, keys)
    at[at == ref.shape[0]] = 0
    return ref[at] == keys


def _cap(
    keys: np.ndarray,
    n: int,
    k: int | None,
    num_graphs: int,
    users: np.ndarray,
    items: np.ndarray,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Keep at most ``k`` of the ascending ``graph * n + node`` keys per graph."""
    if k is None or keys.shape[0] <= k:
        return keys
    g = keys // n
    counts = np.bincount(g, minlength=num_graphs)
    over = counts[g] > k
    if not over.any():
        return keys
    sub = np.flatnonzero(over)
    g_sub = g[sub]
    node_sub = keys[sub] - g_sub * n
    if rng is None:
        priority = node_hash(users[g_sub], items[g_sub], node_sub)
    else:
        priority = rng.random(sub.shape[0])
    order = np.lexsort((node_sub, priority, g_sub))
    # g_sub is ascending, so after sorting by (graph, priority) the graph of
    # rank r is still g_sub[r]; a graph's first rank is its first index.
    rank = np.arange(sub.shape[0]) - np.searchsorted(g_sub, g_sub)
    keep = ~over
    keep[sub[order[rank < k]]] = True
    return keys[keep]


def _validate(graph, users, items, max_nodes_per_hop, hops, y):
    if not isinstance(graph, RatingGraph):
        raise CmcrecError(f"graph must be a RatingGraph, got {type(graph).__name__}")
    users = np.asarray(users)
    items = np.asarray(items)
    for name, a in (("users", users), ("items", items)):
        if a.ndim != 1:
            raise CmcrecError(f"{name} must be one-dimensional, got shape {a.shape}")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise CmcrecError(f"{name} must hold integer indices, got dtype {a.dtype}")
    if users.shape[0] != items.shape[0]:
        raise CmcrecError(f"users and items differ in length ({users.shape[0]} != {items.shape[0]})")
    users = users.astype(np.int64, copy=False)
    items = items.astype(np.int64, copy=False)
    for name, a, n in (("user", users, graph.num_users), ("item", items, graph.num_items)):
        if a.size and (a.min() < 0 or a.max() >= n):
            bad = a[(a < 0) | (a >= n)][0]
            raise CmcrecError(f"target {name} index {int(bad)} out of range [0, {n})")
    if max_nodes_per_hop is not None and (
        isinstance(max_nodes_per_hop, bool) or int(max_nodes_per_hop) != max_nodes_per_hop or max_nodes_per_hop < 1
    ):
        raise CmcrecError(f"max_nodes_per_hop must be a positive integer or None, got {max_nodes_per_hop!r}")
    if isinstance(hops, bool) or int(hops) != hops or hops < 1:
        raise CmcrecError(f"hops must be a positive integer, got {hops!r}")
    if y is None:
        y = np.full(users.shape[0], np.nan, dtype=np.float32)
    else:
        y = np.asarray(y, dtype=np.float32)
        if y.shape != users.shape:
            raise CmcrecError(f"y has shape {y.shape}, expected {users.shape}")
    k = None if max_nodes_per_hop is None else int(max_nodes_per_hop)
    return users, items, k, int(hops), y


def extract_subgraphs_with_nodes(
    graph: RatingGraph,
    users: np.ndarray,
    items: np.ndarray,
    *,
    max_nodes_per_hop: int | None,
    hops: int = 1,
    rng: np.random.Generator | None = None,
    y: np.ndarray | None = None,
) -> tuple[SubgraphBatch, np.ndarray]:
    """:func:`extract_subgraphs`, plus the graph index of every node.

    Returns:
        ``(batch, node_index)`` where ``node_index`` is int64 ``(N,)``: the
        user index of nodes with an even label, the item index of nodes with
        an odd label.
    """
    users, items, k, hops, y = _validate(graph, users, items, max_nodes_per_hop, hops, y)
    B = users.shape[0]
    # Keys graph * n + node need n >= 1; an empty side only occurs with B == 0.
    nu, ni = max(graph.num_users, 1), max(graph.num_items, 1)
    gids = np.arange(B, dtype=np.int64)

    # Node groups in layout order: target users, target items, then per hop
    # (users, items); each group an ascending array of graph * n + node keys.
    user_groups = [gids * nu + users]
    item_groups = [gids * ni + items]
    seen_users, seen_items = user_groups[0], item_groups[0]
    for hop in range(1, hops + 1):
        fu, fi = user_groups[-1], item_groups[-1]
        fu_g, fi_g = fu // nu, fi // ni
        pos, lens = _gather(graph.user_indptr, fu - fu_g * nu)
        cand_items = np.repeat(fu_g * ni, lens) + graph.user_items[pos]
        pos, lens = _gather(graph.item_indptr, fi - fi_g * ni)
        cand_users = np.repeat(fi_g * nu, lens) + graph.item_users[pos]
        if hop > 1:  # hop 1 lists come from one node per graph: already unique and ascending
            cand_items = np.unique(cand_items)
            cand_users = np.unique(cand_users)
        cand_items = cand_items[~_in_sorted(cand_items, seen_items)]
        cand_users = cand_users[~_in_sorted(cand_users, seen_users)]
        if hop < hops:
            seen_items = np.union1d(seen_items, cand_items)
            seen_users = np.union1d(seen_users, cand_users)
        user_groups.append(_cap(cand_users, nu, k, B, users, items, rng))
        item_groups.append(_cap(cand_items, ni, k, B, users, items, rng))

    # Layout: graph g owns a contiguous run; inside it group after group
    # (label order), each group ascending by node index.
    groups = []  # (label, graph, node) per group
    for h in range(hops + 1):
        ug = user_groups[h] // nu
        groups.append((2 * h, ug, user_groups[h] - ug * nu))
        ig = item_groups[h] // ni
        groups.append((2 * h + 1, ig, item_groups[h] - ig * ni))
    num_labels = len(groups)
    counts = np.stack([np.bincount(g, minlength=B) for _, g, _ in groups], axis=1)  # (B, L)
    per_graph = counts.sum(axis=1)
    N = int(per_graph.sum())
    graph_start = np.cumsum(per_graph) - per_graph  # (B,)
    group_start = np.cumsum(counts, axis=1) - counts  # (B, L) offset of a group inside its graph
    run_start = np.cumsum(counts, axis=0) - counts  # (B, L) offset of a graph inside a group array

    node_label = np.repeat(np.tile(np.arange(num_labels, dtype=np.int64), B), counts.ravel())
    node_graph = np.repeat(gids, per_graph)
    node_index = np.empty(N, dtype=np.int64)
    node_id = []  # global node id of each group entry
    for label, g, node in groups:
        base = graph_start + group_start[:, label] - run_start[:, label]
        nid = base[g] + np.arange(g.shape[0], dtype=np.int64)
        node_index[nid] = node
        node_id.append(nid)
    user_pos = graph_start.copy()
    item_pos = graph_start + 1

    # Users in node-id order, so gathered edges come out grouped by source.
    u_graph = np.concatenate([groups[2 * h][1] for h in range(hops + 1)])
    u_node = np.concatenate([groups[2 * h][2] for h in range(hops + 1)])
    u_id = np.concatenate([node_id[2 * h] for h in range(hops + 1)])
    order = np.argsort(u_id, kind="stable")
    u_graph, u_node, u_id = u_graph[order], u_node[order], u_id[order]

    # All ratings of the selected users; keep those whose item is selected in the same graph.
    indptr, rated_item, rated_type, rated_value = graph.user_tensors()
    i_key = np.concatenate([item_groups[h] for h in range(hops + 1)])
    i_id = np.concatenate([node_id[2 * h + 1] for h in range(hops + 1)])
    u_node_t = torch.from_numpy(u_node)
    i_key_t = torch.from_numpy(i_key)
    i_id_t = torch.from_numpy(i_id).to(torch.int32 if N < 2**31 else torch.int64)
    dense = B * ni <= _DENSE_LOOKUP_MAX
    if dense:  # graph * ni + item: membership and local id in one look-up.
        lookup = torch.full((B * ni,), -1, dtype=i_id_t.dtype)
        lookup[i_key_t] = i_id_t
    # The target rating is dropped: it sits in the target user's list (the first user node of its graph).
    target = graph.edge_position(users, items)
    has = target >= 0
    first_user_seg = np.searchsorted(u_id, user_pos)
    kernels = _scan_kernels() if dense else None
    if kernels is not None:
        skip = np.full(u_id.shape[0], -1, dtype=np.int64)
        skip[first_user_seg[has]] = target[has]
        per_seg, dst, pos = kernels.extraction_scan(
            indptr, rated_item, u_node_t, torch.from_numpy(u_graph), torch.from_numpy(skip), lookup, ni
        )
    else:
        # These are the batch's biggest arrays (every rating of every selected user, several times
        # the kept edges), so this part runs in torch: its gathers use every intra-op thread, and
        # runs and repeats are one cumulative sum each (see _runs) instead of repeat + arange.
        starts = indptr.index_select(0, u_node_t)
        lens = indptr.index_select(0, u_node_t + 1) - starts
        total = int(lens.sum())
        seg_start = torch.cumsum(lens, 0) - lens
        pos = _runs(starts, lens, seg_start, total, torch.int32 if graph.num_edges < 2**31 else torch.int64)
        query = _repeat(torch.from_numpy(u_graph * ni), lens, seg_start, total, torch.int32 if dense else torch.int64)
        query += rated_item.index_select(0, pos)
        if dense:
            dst = lookup.index_select(0, query)
        else:
            i_key_t, order = torch.sort(i_key_t)
            i_id_t = i_id_t.index_select(0, order)
            at = torch.searchsorted(i_key_t, query).clamp_(max=max(i_key_t.numel() - 1, 0))
            dst = torch.where(i_key_t.index_select(0, at) == query, i_id_t.index_select(0, at), -1)
        drop = seg_start.numpy()[first_user_seg[has]] + (target[has] - graph.user_indptr[users[has]])
        dst[torch.from_numpy(drop)] = -1
        kept = torch.from_numpy(np.flatnonzero((dst >= 0).numpy()))  # NumPy's is about twice torch's nonzero
        bounds = torch.cat([seg_start, seg_start.new_tensor([total])])
        per_seg = torch.diff(torch.searchsorted(kept, bounds))
        dst = dst.index_select(0, kept).long()
        pos = pos.index_select(0, kept)
    # Source of each kept rating: its list's user, repeated per kept entry.
    E = dst.numel()
    src = _repeat(torch.from_numpy(u_id), per_seg, torch.cumsum(per_seg, 0) - per_seg, E, torch.int64)
    if kernels is None:
        # Canonical order: by (source user, destination item). Sources already ascend, and items
        # ascend by index within a source, but a source's items are ordered by label first (the
        # target item leads): a stable sort of this nearly sorted key is cheap (NumPy's finds the
        # sorted runs; torch's stable sort is a full radix sort) and leaves ``src`` as it is.
        # The kernel's scan returns this order already.
        order = torch.from_numpy(np.argsort((src * N + dst).numpy(), kind="stable"))
        dst = dst.index_select(0, order)
        pos = pos.index_select(0, order)
    edge_index = torch.empty((2, 2 * E), dtype=torch.int64)
    edge_index[0, :E] = src
    edge_index[1, :E] = dst
    edge_index[0, E:] = dst
    edge_index[1, E:] = src
    edge_type = torch.empty(2 * E, dtype=torch.int64)
    torch.index_select(rated_type, 0, pos, out=edge_type[:E])
    edge_type[E:] = edge_type[:E]
    edge_value = torch.empty(2 * E, dtype=torch.float32)
    torch.index_select(rated_value, 0, pos, out=edge_value[:E])
    edge_value[E:] = edge_value[:E]

    batch = SubgraphBatch(
        node_label=torch.from_numpy(node_label),
        edge_index=edge_index,
        edge_type=edge_type,
        edge_value=edge_value,
        node_graph=torch.from_numpy(node_graph),
        user_pos=torch.from_numpy(user_pos),
        item_pos=torch.from_numpy(item_pos),
        y=torch.from_numpy(y.copy()),
        num_labels=num_labels,
        target_user=torch.tensor(users, dtype=torch.int64),
        target_item=torch.tensor(items, dtype=torch.int64),
    )
    return batch, node_index


def extract_subgraphs(
    graph: RatingGraph,
    users: np.ndarray,
    items: np.ndarray,
    *,
    max_nodes_per_hop: int | None,
    hops: int = 1,
    rng: np.random.Generator | None = None,
    y: np.ndarray | None = None,
) -> SubgraphBatch:
    """The enclosing subgraphs of target pairs, stacked into one batch.

    Node order inside graph ``b``: target user, target item, hop-1 users,
    hop-1 items, hop-2 users, ... each group ascending by user/item index.
    Edge order: the first half of the edges are the ratings, user → item,
    ascending by (source node id, destination node id) over the whole batch
    (so grouped by graph); the second half are the same ratings reversed,
    item → user, in the same order (edge ``e + E/2`` is edge ``e`` reversed).

    Args:
        graph: the training graph.
        users: int ``(B,)`` target user indices. Users without ratings are fine.
        items: int ``(B,)`` target item indices. Items without ratings are fine.
        max_nodes_per_hop: cap on each hop's new users and on its new items;
            ``None`` keeps all.
        hops: neighbourhood radius ``h >= 1``; ``num_labels = 2 * (h + 1)``.
        rng: sampling generator (training); ``None`` gives the deterministic,
            batch-independent hash choice (evaluation).
        y: float ``(B,)`` target ratings on the dataset scale; NaN if omitted.

    Returns:
        A :class:`SubgraphBatch` with ``B`` graphs. The target rating, whether
        or not it is in ``graph``, is never an edge.

    Raises:
        CmcrecError: (a ``ValueError``) for mismatched lengths, out-of-range
            indices or invalid ``max_nodes_per_hop``/``hops``.
    """
    batch, _ = extract_subgraphs_with_nodes(
        graph, users, items, max_nodes_per_hop=max_nodes_per_hop, hops=hops, rng=rng, y=y
    )
    return batch
