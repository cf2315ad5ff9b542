"""MoCo v2 on CUB-200-2011, the recipe of LCR's MoCo path (without the LCR branch).

Hyperparameters from ../shared/methods/lcr.md section 3.2 (LCR repo README command
`--epochs 100 --lr 0.03 --batch-size 128 --mlp --moco-t 0.2 --aug-plus --cos`):
SGD momentum 0.9, weight decay 1e-4 on all parameters, lr 0.03 with a per-epoch
cosine and no warm-up, batch 128, 100 epochs, 2048-2048-256 head (LCR's
`--moco-dim` default is 256; MoCo v2's paper uses 128), queue 65,536, m 0.999,
T 0.2, RandomResizedCrop scale (0.2, 1) bilinear and the MoCo v2 photometric recipe.

Data: the official CUB_200_2011/ folder (kind 'cub', official train/test split). LCR's
own layout, `root/{train,test}/<class>/*.jpg`, reads with
`--config.data.kind=image_folder` (data_prep/cub_to_image_folder.py writes it).
LCR starts from supervised ImageNet weights: pass torchvision's
`resnet50-19c8e357.pth` with `--config.model.init_from=PATH`.
"""

from fgjax.config import default_config, photometric_config
from fgjax.data.augment import moco_v2_spec


def get_config():
    c = default_config("moco")
    c.data.kind = "cub"
    c.data.root = "data/CUB_200_2011"
    c.data.image_size = 224
    for view in c.views.values():  # 'view1' queries, 'view2' keys
        view.crop_scale = (0.2, 1.0)
        view.interpolation = "bilinear"
        view.photometric = photometric_config(moco_v2_spec())
    c.moco.dim = 256
    c.moco.queue_size = 65536
    c.moco.momentum = 0.999
    c.moco.temperature = 0.2
    c.moco.bn_groups = 4  # 32 images per BN group at batch 128, MoCo's per-GPU batch
    c.optim.name = "sgd"
    c.optim.lr = 0.03
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.weight_decay_mask = "all"
    c.optim.schedule = "cosine"
    c.optim.schedule_unit = "epoch"
    c.optim.warmup_epochs = 0.0
    c.train.batch_size = 128
    c.train.num_epochs = 100
    c.train.checkpoint_every_steps = 46  # one epoch of CUB at batch 128, as LCR saves
    c.eval.knn_bank = "train"
    return c
