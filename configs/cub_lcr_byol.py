"""BYOL + LCR on CUB-200-2011, the code-faithful preset of LCR's BYOL path (§10 of
../shared/methods/lcr.md).

The BYOL recipe of configs/cub_byol.py (LARS without momentum, lr 0.15, 10 warm-up
epochs, the 800-epoch cosine stopped at 100, constant target decay 0.996, no stem
max-pool: 14x14 layer4 maps at 224 px) with `config.method = 'lcr_byol'`: the BYOL
fields move to `config.lcr_byol`, beside the LCR switches at the BYOL code's values
(spatial softmax at tau 0.4, weight 0.01, the rest as configs/cub_lcr.py).

Start from supervised ImageNet weights: `--config.model.init_from=resnet50-19c8e357.pth`.
"""

import os

from fgjax.config import load_config_file, switch_method


def get_config():
    here = os.path.dirname(os.path.abspath(__file__))
    return switch_method(load_config_file(os.path.join(here, "cub_byol.py")), "lcr_byol")
