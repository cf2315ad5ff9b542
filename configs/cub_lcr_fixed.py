"""MoCo v2 + LCR on CUB-200-2011, the "fixed" preset (../shared/methods/lcr.md §10).

configs/cub_lcr.py with the spec's corrections of the original code: a spatial softmax
(one distribution per image, as the BYOL path and the SAM predecessor) at tau 0.4, the
Grad-CAM rescaled per image by its maximum (so the target is not near-uniform, §4.5) and
detached, and the mask min-max normalised per image (no batch dependence at test time).
Report its numbers separately from the faithful preset's.
"""

import os

from fgjax.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cub_lcr.py"))
    c.lcr.cam_softmax_axis = "spatial"
    c.lcr.tau = 0.4
    c.lcr.cam_norm = "sample_max"
    c.lcr.cam_target_stopgrad = True
    c.lcr.att_norm = "sample_minmax"
    return c
