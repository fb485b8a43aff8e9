"""Graphs: the training rating graph, enclosing subgraphs and the batches models consume."""

from cmcrec.graph.batch import PairBatch, SubgraphBatch
from cmcrec.graph.csr import RatingGraph
from cmcrec.graph.subgraph import extract_subgraphs, extract_subgraphs_with_nodes, node_hash

__all__ = [
    "PairBatch",
    "RatingGraph",
    "SubgraphBatch",
    "extract_subgraphs",
    "extract_subgraphs_with_nodes",
    "node_hash",
]
