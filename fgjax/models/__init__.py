"""Backbones and heads (Flax Linen, NHWC)."""

from fgjax.models.heads import MLP
from fgjax.models.norm import BatchNorm
from fgjax.models.resnet import ResNet, resnet50
from fgjax.models.swin import Swin, swin_from_name

__all__ = ["MLP", "BatchNorm", "ResNet", "Swin", "resnet50", "swin_from_name"]
