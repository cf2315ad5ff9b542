"""MoCo v2 on Stanford Cars:
configs/cub_moco.py on the devkit layout (kind 'cars', official train/test).

Per ../shared/methods/lcr.md sections 3.1 and 5: 63 steps per epoch at batch 128.
"""

import os

from fgjax.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cub_moco.py"))
    c.data.kind = "cars"
    c.data.root = "data/stanford_cars"
    c.train.checkpoint_every_steps = 63

    return c
