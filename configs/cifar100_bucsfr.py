"""BuCSFR on CIFAR-100 with its 20 official superclasses as the only labels trained on.

Per ../shared/methods/bucsfr.md (the official repo's main.py and train.sh, sections 2-7):
ResNet-50 from supervised ImageNet weights (pass torchvision's `resnet50-19c8e357.pth` with
`--config.model.init_from=PATH`), the 32 px images upsampled to 224; MoCo v2 with a
2048-2048-128 head, queue 65,536, m 0.999, T 0.2; BN statistics per 128 images (the
original's 2 GPUs, `bn_groups=2`); SGD lr 0.03, momentum 0.9, weight decay 1e-4 on all
parameters, per-epoch cosine without warm-up, batch 256, 100 epochs. BuC: 25 leaves per
superclass (500 in all), merge threshold T 2.0, first BuC step before epoch 10. Evaluation
every 10 epochs on fine labels: Recall@{1,2,5,10,50,100,200} inside the test set and kNN
(majority vote, train bank) at the same K; `eval.json` has the final numbers and, in
`best_each`, the per-metric best over the evaluations (what the original prints).

Differs from the original: both views use one colour jitter (0.4, 0.4, 0.4, 0.1), not the
original's two in a row (the second 0.5, 0.5, 0.5, 0.2).
"""

from fgjax.config import default_config, photometric_config
from fgjax.data.augment import moco_v2_spec

KS = (1, 2, 5, 10, 50, 100, 200)


def bucsfr_recipe(c):
    """The settings every BuCSFR recipe shares (optimiser, schedule, evaluation)."""
    c.bucsfr.dim = 128
    c.bucsfr.queue_size = 65536
    c.bucsfr.momentum = 0.999
    c.bucsfr.temperature = 0.2
    c.bucsfr.bn_groups = 2
    c.bucsfr.warmup_epochs = 10
    c.bucsfr.alpha = 0.5
    c.optim.name = "sgd"
    c.optim.lr = 0.03
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.weight_decay_mask = "all"
    c.optim.schedule = "cosine"
    c.optim.schedule_unit = "epoch"
    c.optim.warmup_epochs = 0.0
    c.train.batch_size = 256
    c.train.num_epochs = 100
    c.eval.every_epochs = 10
    c.eval.recall_ks = KS
    c.eval.knn_ks = KS
    c.eval.knn_vote = "majority"
    c.eval.knn_bank = "train"
    c.eval.best_metric = "retrieval_recall@1"
    return c


def get_config():
    c = bucsfr_recipe(default_config("bucsfr"))
    c.data.kind = "cifar100"
    c.data.root = "data/cifar"
    c.data.coarse = "superclass"
    c.data.image_size = 224
    for view in c.views.values():  # 'view1' queries, 'view2' keys: the same pipeline
        view.crop_scale = (0.25, 1.0)
        view.photometric = photometric_config(moco_v2_spec())
    c.bucsfr.clusters_per_coarse = 25
    c.bucsfr.merge_threshold = 2.0
    c.train.checkpoint_every_steps = 195  # one epoch: 50,000 // 256
    return c
