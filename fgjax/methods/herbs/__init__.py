"""HERBS (Chou et al., 2023; chou141253/FGVC-HERBS): a Swin backbone with feature-pyramid,
selection and graph-combiner heads, supervised on fine labels; its model, the map from the
original's checkpoint keys, the Grad-CAM heat maps and the test-split report."""

from fgjax.methods.herbs.method import Herbs

__all__ = ["Herbs"]
