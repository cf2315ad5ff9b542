"""Linear classification on a frozen backbone: MoCo v2's `main_lincls.py` recipe, which
LCR's MoCo path uses for its linear-probing table (../shared/methods/lcr.md section 6.1).

Only a linear classifier (N(0, 0.01) weights, zero bias) on the pooled 2048-d feature is
trained; the backbone from `--config.model.init_from=PATH` stays frozen, BatchNorm in eval
mode. SGD lr 30, momentum 0.9, no weight decay, batch 256, 100 epochs, lr x0.1 at epochs
60 and 80; train views RandomResizedCrop(224, scale (0.08, 1), bilinear) + flip; test
Resize(256) + CenterCrop(224). Reports `lincls/top1`, `lincls/top5` and
`lincls/per_class_accuracy` on the test split at the end (and, as for every method, the
retrieval / kNN numbers of the frozen backbone's pooled feature).

MoCo and LCR report the best test top-1 over the 100 epochs (the test set selects);
`--config.eval.every_epochs=1` records every epoch and eval.json's `best` is that number.
LCR classifies its L2-normalised, attention-pooled descriptor: configs/cub_lcr_lincls.py
(`lincls.feature='lcr'`, the rationale branch loaded and frozen with the backbone);
`--config.lincls.normalize=True` L2-normalises the plain pooled feature instead.

    fgjax train --config configs/lincls.py --workdir runs/lincls \
        --config.model.init_from=moco_cub.pth --config.data.root=data/CUB200
"""

from fgjax.config import default_config


def get_config():
    c = default_config("lincls")
    c.data.kind = "image_folder"  # root/train/<class>/*.jpg and root/test/<class>/*.jpg
    c.data.root = "data/CUB200"
    c.data.image_size = 224
    c.views.view1.crop_scale = (0.08, 1.0)
    c.views.view1.interpolation = "bilinear"
    c.optim.name = "sgd"
    c.optim.lr = 30.0
    c.optim.momentum = 0.9
    c.optim.weight_decay = 0.0
    c.optim.schedule = "step"
    c.optim.decay_epochs = (60, 80)
    c.optim.decay_factor = 0.1
    c.optim.warmup_epochs = 0.0
    c.optim.freeze = ("backbone",)  # the method requires it: only the classifier trains
    c.train.batch_size = 256
    c.train.num_epochs = 100
    c.train.checkpoint_every_steps = 500
    c.eval.best_metric = "lincls/top1"
    c.eval.knn_bank = "train"
    return c
