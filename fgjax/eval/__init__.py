"""Evaluation: features of a split, chunked on-device retrieval and kNN."""

from fgjax.eval.knn import knn_classify, knn_top1, nearest_neighbors
from fgjax.eval.retrieval import retrieval_metrics

__all__ = ["knn_classify", "knn_top1", "nearest_neighbors", "retrieval_metrics"]
