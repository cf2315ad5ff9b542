"""HERBS on NABirds: configs/cub_herbs.py with the NABirds data (../shared/methods/herbs.md).

The repository has no NABirds config (spec 12): as the spec presumes, everything but the
classes (555, read from the dataset) stays at the CUB recipe of spec 5.1. The warm-up is
1500 micro-batches (spec 5.1 warmup_batchs), which is half an epoch here: 23,929 training
images give 747 optimiser steps of 32 = 2,988 micro-batches per epoch (spec 5.2 counts
2,992 with HERBS' ragged last batch). The CUB confusable groups do not apply.

Not reproduced: as listed in configs/cub_herbs.py.
"""

import os

from fgjax.config import load_config_file

NABIRDS_TRAIN = 23929  # spec 5.2 / 7


def get_config():
    here = os.path.dirname(os.path.abspath(__file__))
    c = load_config_file(os.path.join(here, "cub_herbs.py"))
    c.data.kind = "nabirds"
    c.data.root = "data/nabirds"
    c.eval.class_groups = ""
    micro_batch = c.train.batch_size // c.train.accumulate_steps
    micro_batches = -(-NABIRDS_TRAIN // micro_batch)  # 2,992 per epoch, the last partial
    c.optim.warmup_epochs = 1500 / micro_batches  # spec 5.1 warmup_batchs, in micro-batches
    return c
