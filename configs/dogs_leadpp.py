"""LEAD++ on Stanford Dogs: configs/cub_leadpp.py on the official layout (kind 'dogs',
train/test lists, 120 classes), the original's `dog_text_tensor.pt` prototypes
(120 x 512) and DDT crops under `data/dogs_ddt_crops` (`fgjax ddt`). The
original ships no Dogs command: these are its CUB settings. 187 steps per epoch at
batch 64."""

import os

from fgjax.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cub_leadpp.py"))
    c.data.kind = "dogs"
    c.data.root = "data/stanford_dogs"
    c.views.view3.root = c.views.view4.root = "data/dogs_ddt_crops"
    c.leadpp.prototypes = "text_description_tensor/dog_text_tensor.pt"
    c.leadpp.num_classes = 120
    c.train.checkpoint_every_steps = 187
    return c
