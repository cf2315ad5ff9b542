"""LEAD++'s linear probe on CUB-200-2011 (../shared/methods/leadpp.md section 7.1): a linear
classifier on the mask-weighted descriptor L2norm(mean_hw(a * A)) of the frozen LEAD++
backbone and rationale branch, trained and tested on the DDT crops.

configs/lincls.py's protocol (SGD lr 30, momentum 0.9, no weight decay, batch 256, 100
epochs, lr x0.1 at 60 and 80, N(0, 0.01) weights), with every image read from the DDT crop
root at its path relative to the dataset root (`fgjax ddt` writes it; the training
view's `root` and `config.data.eval_root`). The mask a is min-max normalised over the whole
batch (the original's test code), so the descriptor is the LEAD++ run's
`embed_feature='rationale'`. The original reports the best test top-1 over the 100 epochs
(test-set selection) and, as the spec asks, fgjax keeps the last epoch's too: eval.json's
`best` and its final numbers.

    fgjax train --config configs/cub_leadpp_lincls.py --workdir runs/cub_leadpp_lincls \
        --config.model.init_from=runs/cub_leadpp --config.data.root=data/CUB_200_2011 \
        --config.data.eval_root=data/cub_ddt_crops --config.views.view1.root=data/cub_ddt_crops

`init_from` is the LEAD++ run's workdir (its newest checkpoint) or `WORKDIR/checkpoints/STEP`.
For Cars, Aircraft or Dogs set `data.kind` / `data.root` as in that dataset's LEAD++ recipe.
"""

import os

from fgjax.config import load_config_file

CROPS = "data/cub_ddt_crops"


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "lincls.py"))
    c.seed = 123
    c.data.kind = "cub"
    c.data.root = "data/CUB_200_2011"
    c.data.eval_root = CROPS  # test crops (and the kNN bank's train crops)
    # linear_probing.py's test transform: Resize((256, 256)) bilinear (aspect ignored),
    # then CenterCrop(224).
    c.data.eval_resize = "squash"
    c.data.eval_squash_size = 256
    c.views.view1.root = CROPS  # train crops
    c.lincls.feature = "lcr"
    c.lincls.lcr_maps = 32  # the rationale branch's maps (config.leadpp.proj_dim)
    c.lincls.lcr_att_norm = "batch_minmax"  # min-max over the whole batch (spec 7.1)
    c.optim.freeze = ("backbone", "rationale")
    c.eval.every_epochs = 1  # top-1 after every epoch: eval.json's best (the original's)
    c.eval.recall_ks = (1, 5)
    return c
