"""BYOL + LCR on FGVC-Aircraft: configs/aircraft_byol.py with `config.method = 'lcr_byol'`,
LCR switches at the code-faithful values of configs/cub_lcr_byol.py (../shared/methods/lcr.md §10).

Start from supervised ImageNet weights: `--config.model.init_from=resnet50-19c8e357.pth`.
"""

import os

from fgjax.config import load_config_file, switch_method


def get_config():
    here = os.path.dirname(os.path.abspath(__file__))
    return switch_method(load_config_file(os.path.join(here, "aircraft_byol.py")), "lcr_byol")
