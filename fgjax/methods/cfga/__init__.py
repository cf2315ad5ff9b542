"""CFGA (mikiyukio/CFGA): training-free descriptors (GAP, SCDA, CFGA, CFGA+) of a frozen
backbone (`descriptors/`), and the metric-learning baselines it is compared with
(mikiyukio/CFGA_CARS196_train: MS loss, CosFace, ArcFace, Proxy-Anchor, DGPCRL)."""

from fgjax.methods.cfga.metric_learning import (
    DGPCRL,
    ArcFace,
    CosFace,
    MetricLearning,
    MSLoss,
    ProxyAnchor,
)

__all__ = ["DGPCRL", "ArcFace", "CosFace", "MSLoss", "MetricLearning", "ProxyAnchor"]
