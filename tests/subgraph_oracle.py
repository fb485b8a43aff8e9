"""The slow, obvious enclosing-subgraph extraction the fast code is checked against.

One pair at a time, Python sets over a dict-of-dicts graph, the hash written
out in Python integers. It shares no code with :mod:`cmcrec.graph.subgraph`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_MASK = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def node_hash(u: int, i: int, node: int) -> int:
    return splitmix64(splitmix64(splitmix64(u) ^ i) ^ node)


class DictGraph:
    """``by_user[u][i] = by_item[i][u] = (type, value)`` for every rating."""

    def __init__(self, user, item, edge_type, edge_value) -> None:
        self.by_user: dict[int, dict[int, tuple[int, float]]] = {}
        self.by_item: dict[int, dict[int, tuple[int, float]]] = {}
        for u, i, t, v in zip(user, item, edge_type, edge_value, strict=True):
            rating = (int(t), float(np.float32(v)))
            self.by_user.setdefault(int(u), {})[int(i)] = rating
            self.by_item.setdefault(int(i), {})[int(u)] = rating

    @classmethod
    def from_rating_graph(cls, g) -> DictGraph:
        users = np.repeat(np.arange(g.num_users), np.diff(g.user_indptr))
        return cls(users, g.user_items, g.user_types, g.user_values)

    def items_of(self, u: int) -> set[int]:
        return set(self.by_user.get(u, {}))

    def users_of(self, i: int) -> set[int]:
        return set(self.by_item.get(i, {}))


# chooser(graph, kind, hop, u, i, candidates, k) -> the kept subset, called
# when a hop has more than k candidates.
Chooser = Callable[[int, str, int, int, int, set, int], set]


def hash_chooser(graph: int, kind: str, hop: int, u: int, i: int, candidates: set, k: int) -> set:
    return set(sorted(candidates, key=lambda n: (node_hash(u, i, n), n))[:k])


def one_subgraph(
    graph: DictGraph, u: int, i: int, hops: int, cap: int | None, choose: Chooser = hash_chooser, index: int = 0
):
    """Nodes ``[(label, kind, index)]`` in layout order, and the user→item
    ratings among them as ``[(src_local, dst_local, type, value)]`` sorted."""
    user_hops, item_hops = [[u]], [[i]]
    seen_users, seen_items = {u}, {i}
    user_front, item_front = {u}, {i}
    for hop in range(1, hops + 1):
        new_items = set().union(*(graph.items_of(x) for x in user_front)) - seen_items
        new_users = set().union(*(graph.users_of(x) for x in item_front)) - seen_users
        seen_items |= new_items
        seen_users |= new_users
        if cap is not None and len(new_users) > cap:
            new_users = choose(index, "user", hop, u, i, new_users, cap)
        if cap is not None and len(new_items) > cap:
            new_items = choose(index, "item", hop, u, i, new_items, cap)
        user_hops.append(sorted(new_users))
        item_hops.append(sorted(new_items))
        user_front, item_front = new_users, new_items
    nodes = []
    for h in range(hops + 1):
        nodes += [(2 * h, "user", n) for n in user_hops[h]]
        nodes += [(2 * h + 1, "item", n) for n in item_hops[h]]
    local = {(kind, n): j for j, (_, kind, n) in enumerate(nodes)}
    edges = []
    for _, kind, a in nodes:
        if kind != "user":
            continue
        for _, kind2, b in nodes:
            if kind2 == "item" and (a, b) != (u, i) and b in graph.by_user.get(a, {}):
                t, v = graph.by_user[a][b]
                edges.append((local[("user", a)], local[("item", b)], t, v))
    return nodes, sorted(edges)


def oracle_batch(graph: DictGraph, users, items, hops: int, cap: int | None, choose: Chooser = hash_chooser):
    """Plain-Python arrays in the :class:`SubgraphBatch` layout:
    ``dict(node_label, node_index, node_graph, edge_index, edge_type, edge_value, user_pos, item_pos)``."""
    node_label, node_index, node_graph = [], [], []
    fwd, user_pos, item_pos = [], [], []
    offset = 0
    for g, (u, i) in enumerate(zip(users, items, strict=True)):
        nodes, edges = one_subgraph(graph, int(u), int(i), hops, cap, choose, g)
        node_label += [label for label, _, _ in nodes]
        node_index += [n for _, _, n in nodes]
        node_graph += [g] * len(nodes)
        user_pos.append(offset)
        item_pos.append(offset + 1)
        fwd += [(s + offset, d + offset, t, v) for s, d, t, v in edges]
        offset += len(nodes)
    src = [e[0] for e in fwd]
    dst = [e[1] for e in fwd]
    return {
        "node_label": node_label,
        "node_index": node_index,
        "node_graph": node_graph,
        "edge_index": [src + dst, dst + src],
        "edge_type": [e[2] for e in fwd] * 2,
        "edge_value": [e[3] for e in fwd] * 2,
        "user_pos": user_pos,
        "item_pos": item_pos,
    }
