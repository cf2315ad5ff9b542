"""LEAD++ on FGVC-Aircraft: configs/cub_leadpp.py on the official fgvc-aircraft-2013b/
layout (kind 'aircraft', 100 variants, trainval/test as the original's organiser), the
original's `aircraft_text_tensor.pt` prototypes (100 x 512) and DDT crops under
`data/aircraft_ddt_crops` (`fgjax ddt`). 104 steps per epoch at batch 64."""

import os

from fgjax.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cub_leadpp.py"))
    c.data.kind = "aircraft"
    c.data.root = "data/fgvc-aircraft-2013b"
    c.data.train_split = "trainval"
    c.data.test_split = "test"
    c.views.view3.root = c.views.view4.root = "data/aircraft_ddt_crops"
    c.leadpp.prototypes = "text_description_tensor/aircraft_text_tensor.pt"
    c.leadpp.num_classes = 100
    c.train.checkpoint_every_steps = 104
    return c
