"""BYOL on Stanford Cars:
configs/cub_byol.py on the devkit layout (kind 'cars', official train/test).

Per ../shared/methods/lcr.md sections 3.1 and 5: 63 steps per epoch at batch 128.
Unlike CUB, LCR runs the full 100-epoch cosine to 0 on this dataset.
"""

import os

from fgjax.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cub_byol.py"))
    c.data.kind = "cars"
    c.data.root = "data/stanford_cars"
    c.train.checkpoint_every_steps = 63
    c.optim.cosine_epochs = 0  # the cosine spans the 100 epochs that run
    return c
