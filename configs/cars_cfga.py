"""CFGA / SCDA / Pooling retrieval on Stanford Cars (CARS196) from ImageNet weights, no
training (../shared/methods/cfga.md Table 5): `fgjax describe`.

    fgjax describe --init-from resnet50-19c8e357.pth --config configs/cars_cfga.py \\
        --config.data.root=data/stanford_cars --method cfga,scda,gap --out runs/cars_cfga_r50

Classes 1-98 / 99-196 over the official train and test images (spec §5: 8,131 test
images, uncropped: no boxes). Otherwise as configs/cub_cfga.py.
"""

import os

from fgjax.config import load_config_file


def get_config():
    here = os.path.dirname(os.path.abspath(__file__))
    c = load_config_file(os.path.join(here, "cub_cfga.py"))
    c.data.kind = "cars"
    c.data.root = "data/stanford_cars"
    return c
