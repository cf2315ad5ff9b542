"""CFGA / SCDA / Pooling retrieval on CUB-200-2011 from ImageNet weights, no training
(../shared/methods/cfga.md Table 5): `fgjax describe`, not `fgjax.cli.train`.

    fgjax describe --init-from resnet50-19c8e357.pth --config configs/cub_cfga.py \\
        --config.data.root=data/CUB_200_2011 --method cfga,scda,gap --out runs/cub_cfga_r50

ResNet-101 / 152: `--config.model.arch=resnet101` with `resnet101-5d3b4d8f.pth` (152:
`resnet152-b121ed2d.pth`), torchvision's V1 weights. The metric-learning split of the
spec (§5): classes 1-100 / 101-200, the 5,924 test images both queries and gallery. The
'imagenet' pipeline (uncropped, shorter side capped at 256, LCC mask) is
`fgjax describe`'s default for this recipe; ImageNet mean/std.
"""

from fgjax.config import default_config, photometric_config
from fgjax.data.augment import no_augment_spec


def get_config():
    c = default_config("supervised")  # no training: the head is never used
    c.model.arch = "resnet50"
    c.model.dtype = "float32"
    c.data.kind = "cub"
    c.data.root = "data/CUB_200_2011"
    c.data.train_split = "retrieval_train"
    c.data.test_split = "retrieval_test"
    c.views.view1.photometric = photometric_config(no_augment_spec())  # ImageNet mean/std
    c.train.num_epochs = 0
    return c
