"""LEAD++ on Stanford Cars: configs/cub_leadpp.py on the devkit layout (kind 'cars',
official train/test, 196 classes), the original's `car_text_tensor.pt` prototypes
(196 x 512) and DDT crops under `data/cars_ddt_crops` (`fgjax ddt`).
127 steps per epoch at batch 64 (spec 6)."""

import os

from fgjax.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cub_leadpp.py"))
    c.data.kind = "cars"
    c.data.root = "data/stanford_cars"
    c.views.view3.root = c.views.view4.root = "data/cars_ddt_crops"
    c.leadpp.prototypes = "text_description_tensor/car_text_tensor.pt"
    c.leadpp.num_classes = 196
    c.train.checkpoint_every_steps = 127
    return c
