"""MS loss (spec 7.1) on Stanford Cars, zero-shot split (classes 1-98 train, 99-196 test).

One of CFGA's metric-learning baselines, built by `recipe` of configs/common/metric_learning.py
(every hyperparameter and its source is there). Starts from torchvision's ImageNet
ResNet-50 `resnet50-19c8e357.pth` in the working directory (or `--config.model.init_from=PATH`).
"""

import os
import runpy

from fgjax.config import default_config

COMMON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "common")


def get_config():
    recipe = runpy.run_path(os.path.join(COMMON, "metric_learning.py"))["recipe"]
    return recipe(default_config("ms_loss"), "cars")
