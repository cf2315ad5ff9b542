"""LCR, Learning Common Rationale (Shu et al., CVPR 2023; GANPerf/LCR): a rationale branch
fitted to the SSL loss's Grad-CAM, on MoCo v2 (`lcr`) or BYOL (`lcr_byol`); `lincls`, the
paper's linear probe on the frozen rationale descriptor; the rationale pictures."""

from fgjax.methods.lcr.lincls import LinCls
from fgjax.methods.lcr.method import LCR, LCRBYOL

__all__ = ["LCR", "LCRBYOL", "LinCls"]
