"""BuCSFR on CUB-200-2011 with BuCSFR's 24 hand-made bird groups as the only labels.

As configs/cifar100_bucsfr.py (optimiser, schedule, MoCo, evaluation) with the CUB row of
../shared/methods/bucsfr.md section 6.1: official train (5,994) / test (5,794) split, whole
images (no bounding-box crop), coarse level 'bucsfr' (section 6.2), 40 leaves per group
(960 in all), merge threshold T 1.1. Views (section 6.3): both the query ('view1') and the
key ('view2') are the strong view (RandomResizedCrop(0.2, 1) + flip, MoCo v2 colour,
grayscale, blur), normalised with CUB's own mean and std (evaluation normalises as 'view1').

Differs from the original: no RandomPerspective(0.5, p 0.5) in either view.
"""

import dataclasses
import os

from fgjax.config import load_config_file, photometric_config
from fgjax.data.augment import moco_v2_spec

CUB_MEAN = (0.486, 0.499, 0.432)
CUB_STD = (0.232, 0.228, 0.267)


def get_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar100_bucsfr.py")
    c = load_config_file(path)
    c.data.kind = "cub"
    c.data.root = "data/CUB_200_2011"
    c.data.coarse = "bucsfr"
    strong = dataclasses.replace(moco_v2_spec(), mean=CUB_MEAN, std=CUB_STD)
    for view in c.views.values():  # 'view1' queries, 'view2' keys: the same pipeline
        view.crop_scale = (0.2, 1.0)
        view.photometric = photometric_config(strong)
    c.bucsfr.clusters_per_coarse = 40
    c.bucsfr.merge_threshold = 1.1
    c.train.checkpoint_every_steps = 23  # one epoch: 5,994 // 256
    return c
