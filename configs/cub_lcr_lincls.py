"""LCR's linear probe on CUB-200-2011 (../shared/methods/lcr.md section 6.1): the paper's
protocol, which classifies LCR's descriptor L2norm(mean_hw(a * A)), not the pooled feature.

configs/lincls.py (SGD lr 30, momentum 0.9, no weight decay, batch 256, 100 epochs, lr x0.1
at 60 and 80, RandomResizedCrop (0.08, 1) + flip) on the official CUB_200_2011 folder, with
the backbone and the rationale branch loaded from an LCR training run and both frozen:

    fgjax train --config configs/cub_lcr_lincls.py --workdir runs/cub_lcr_lincls \
        --config.model.init_from=runs/cub_lcr --config.data.root=data/CUB_200_2011

`init_from` is the LCR run's workdir (its newest checkpoint) or `WORKDIR/checkpoints/STEP`
(the authors advise the epoch with the best retrieval score, e.g. 75). For a run of the
fixed preset (per-image mask normalisation) add `--config.lincls.lcr_att_norm=sample_minmax`;
`lcr_maps` must equal the run's `config.lcr.proj_dim`. LCR reports the best test top-1 over
the epochs: add `--config.eval.every_epochs=1` (eval.json's `best`).
"""

import os

from fgjax.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "lincls.py"))
    c.data.kind = "cub"
    c.data.root = "data/CUB_200_2011"
    c.lincls.feature = "lcr"
    c.optim.freeze = ("backbone", "rationale")
    return c
