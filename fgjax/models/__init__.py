"""Backbones and heads (Flax Linen, NHWC); backbones are built by name through the registry."""

from fgjax.models.heads import MLP
from fgjax.models.norm import BatchNorm
from fgjax.models.registry import arch_family, arch_names, build_backbone, register
from fgjax.models.resnet import ResNet
from fgjax.models.swin import Swin, swin_from_name

__all__ = [
    "MLP",
    "BatchNorm",
    "ResNet",
    "Swin",
    "arch_family",
    "arch_names",
    "build_backbone",
    "register",
    "swin_from_name",
]
