"""MoCo v2 on FGVC-Aircraft (100 variants, trainval/test):
configs/cub_moco.py on the official fgvc-aircraft-2013b/ layout (kind 'aircraft', trainval/test).

Per ../shared/methods/lcr.md sections 3.1 and 5: 52 steps per epoch at batch 128.
"""

import os

from fgjax.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cub_moco.py"))
    c.data.kind = "aircraft"
    c.data.root = "data/fgvc-aircraft-2013b"
    c.data.train_split = "trainval"
    c.train.checkpoint_every_steps = 52

    return c
