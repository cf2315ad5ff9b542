"""MoCo v2 + LCR on CUB-200-2011, the code-faithful preset (../shared/methods/lcr.md §10).

The MoCo v2 recipe of configs/cub_moco.py (LCR's MoCo path: SGD 0.03, per-epoch cosine,
batch 128, 100 epochs, 2048-2048-256 head, queue 65,536, m 0.999, T 0.2, MoCo v2
augmentations, stem max-pool: 7x7 layer4 maps at 224 px) with `config.method = 'lcr'`:
the MoCo fields move to `config.lcr`, beside the LCR switches, every one at the
original code's behaviour: 32 rationale maps, weight 0.01, tau 1, row-wise softmax,
Grad-CAM of the loss, no Grad-CAM rescaling, min-max of the mask over each GPU's batch
tensor, target not detached, KL summed.

The original trains with DDP; `bn_groups = 4` (cub_moco.py) plays 4 GPUs of 32 images and
`loss_device_groups` (0 = bn_groups) makes the LCR loss per GPU as well: each GPU's
Grad-CAM of its own mean InfoNCE (1/(32*49), not 1/(128*49)), its own mask min-max, its
summed KL averaged over the GPUs as DDP averages gradients. Checked step for step against
4 gloo processes of the authors' main_moco.py (tests/parity/test_lcr_golden.py).

LCR starts from supervised ImageNet weights: pass torchvision's `resnet50-19c8e357.pth`
with `--config.model.init_from=PATH`.
"""

import os

from fgjax.config import load_config_file, switch_method


def get_config():
    here = os.path.dirname(os.path.abspath(__file__))
    return switch_method(load_config_file(os.path.join(here, "cub_moco.py")), "lcr")
