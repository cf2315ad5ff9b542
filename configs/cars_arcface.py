"""ArcFace (spec 7.3) on Stanford Cars, zero-shot split (classes 1-98 train, 99-196 test).

One of CFGA's metric-learning baselines, built by fgjax.methods.cfga.metric_learning.recipe
(every hyperparameter and its source is there). Starts from torchvision's ImageNet
ResNet-50 `resnet50-19c8e357.pth` in the working directory (or `--config.model.init_from=PATH`).
"""

from fgjax.config import default_config
from fgjax.methods.cfga.metric_learning import recipe


def get_config():
    return recipe(default_config("arcface"), "cars")
