"""MS loss (spec 7.1) on CUB-200-2011, zero-shot split (classes 1-100 train, 101-200 test).

One of CFGA's metric-learning baselines, built by fgjax.methods.cfga.metric_learning.recipe
(every hyperparameter and its source is there). Starts from torchvision's ImageNet
ResNet-50 `resnet50-19c8e357.pth` in the working directory (or `--config.model.init_from=PATH`).
"""

from fgjax.config import default_config
from fgjax.methods.cfga.metric_learning import recipe


def get_config():
    return recipe(default_config("ms_loss"), "cub")
