"""BuCSFR on Stanford Cars with the 8 body types (MaskCon's mapping) as the only labels.

As configs/cifar100_bucsfr.py (optimiser, schedule, MoCo, evaluation) with the Cars row of
../shared/methods/bucsfr.md section 6.1: official train (8,144) / test (8,041) split, 125
leaves per body type (1,000 in all), merge threshold T 1.1. Views (section 6.3): the
query ('view1') is the WEAK view (RandomResizedCrop(0.2, 1) + flip, no colour), the key
('view2') the strong one (MoCo v2 colour, grayscale, blur).

Differs from the original: no RandomPerspective(0.5, p 0.5) in either view.
"""

import os

from fgjax.config import load_config_file, photometric_config
from fgjax.data.augment import moco_v2_spec, no_augment_spec


def get_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar100_bucsfr.py")
    c = load_config_file(path)
    c.data.kind = "cars"
    c.data.root = "data/stanford_cars"
    c.data.coarse = "type"
    c.views.view1.crop_scale = (0.2, 1.0)
    c.views.view1.photometric = photometric_config(no_augment_spec())
    c.views.view2.crop_scale = (0.2, 1.0)
    c.views.view2.photometric = photometric_config(moco_v2_spec())
    c.bucsfr.clusters_per_coarse = 125
    c.bucsfr.merge_threshold = 1.1
    c.train.checkpoint_every_steps = 31  # one epoch: 8,144 // 256
    return c
