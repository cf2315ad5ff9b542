"""BYOL + LCR on CUB-200-2011, the "fixed" preset (../shared/methods/lcr.md §10).

configs/cub_lcr_byol.py with the spec's corrections of the original BYOL code: the
Grad-CAM rescaled per image by its maximum and detached, the mask min-max normalised per
image, and LARS with momentum 0.9 (the original's LARS never stores its velocity, so it
runs without momentum). The BYOL path already has the spatial softmax at tau 0.4. Report
its numbers separately from the faithful preset's.
"""

import os

from fgjax.config import load_config_file


def get_config():
    here = os.path.dirname(os.path.abspath(__file__))
    c = load_config_file(os.path.join(here, "cub_lcr_byol.py"))
    c.lcr_byol.cam_norm = "sample_max"
    c.lcr_byol.cam_target_stopgrad = True
    c.lcr_byol.att_norm = "sample_minmax"
    c.optim.momentum = 0.9
    return c
