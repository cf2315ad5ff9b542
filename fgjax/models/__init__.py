"""Backbones and heads (Flax Linen, NHWC)."""

from fgjax.models.heads import MLP
from fgjax.models.norm import BatchNorm
from fgjax.models.resnet import ResNet, resnet50

__all__ = ["MLP", "BatchNorm", "ResNet", "resnet50"]
