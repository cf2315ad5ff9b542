"""BYOL on CUB-200-2011, the recipe of LCR's BYOL path (without the LCR branch).

From ../shared/methods/lcr.md section 3.1 (LCR `configs/byol_cub200.yaml`): LARS
with trust coefficient 1e-3 and weight decay 1.5e-6 on conv/linear kernels only,
momentum 0 (the code never stores the velocity; set `--config.optim.momentum=0.9`
for the intended variant), lr 0.3 x B/256 = 0.15, 10 warm-up epochs (linear from 0,
the peak on their last step; the first step at the peak, the schedule one step late),
then a cosine
laid out over 800 epochs of which only 100 run (lr ends near 0.145, the repo's CUB
quirk), batch 128, 4096-256 projector and predictor with BN, constant target decay
0.996 (LCR's code; `--config.byol.ema_schedule=cosine` for the BYOL paper), no stem
max-pool (14x14 stage-4 maps at 224), bicubic RandomResizedCrop (0.08, 1) and the
asymmetric BYOL photometric views.
"""

from fgjax.config import default_config, photometric_config
from fgjax.data.augment import byol_view1_spec, byol_view2_spec


def get_config():
    c = default_config("byol")
    c.model.stem_maxpool = False
    c.data.kind = "cub"
    c.data.root = "data/CUB_200_2011"
    c.data.image_size = 224
    for view, spec in ((c.views.view1, byol_view1_spec()), (c.views.view2, byol_view2_spec())):
        view.crop_scale = (0.08, 1.0)
        view.interpolation = "bicubic"
        view.photometric = photometric_config(spec)
    c.byol.hidden_dim = 4096
    c.byol.dim = 256
    c.byol.ema_base = 0.996
    c.byol.ema_schedule = "constant"
    c.optim.name = "lars"
    c.optim.lr = 0.3
    c.optim.lr_batch_reference = 256
    c.optim.momentum = 0.0
    c.optim.weight_decay = 1.5e-6
    c.optim.weight_decay_mask = "kernels"
    c.optim.trust_coefficient = 1e-3
    c.optim.warmup_epochs = 10.0
    # LR_Scheduler's np.linspace(0, peak, warm-up steps) reaches the peak on the last
    # warm-up step, and runs one step late: main.py's first step takes the optimiser's
    # initial lr (the peak) before the scheduler writes any.
    c.optim.warmup_reaches_peak = "last"
    c.optim.schedule_delay_steps = 1
    c.optim.cosine_epochs = 800
    c.optim.schedule_unit = "step"
    c.train.batch_size = 128
    c.train.num_epochs = 100
    c.train.checkpoint_every_steps = 46
    c.eval.knn_bank = "train"
    return c
