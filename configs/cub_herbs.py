"""HERBS on CUB-200-2011: the original code's recipe (../shared/methods/herbs.md, "spec").

Model (spec 2.1, 3, 5.1): Swin-L/384 window 12 (`swin_large_patch4_window12_384`), drop
path 0.1, the HERBS head with D = 1536, K = 256/128/64/32, 64 tokens per graph node,
combiner dropout 0.1. Start from the ImageNet-22k Swin-L (spec 8.1):
`--config.model.init_from=swin_large_patch4_window12_384_22k.pth`.

Loss (spec 4, 5.1): weights 1.375 (L_HR), 0.3 (L_layer), 5.0 (L_drop), 0 (L_sel), 1.0
(L_comb); T = 64, halved every 10 epochs.

Optimisation (spec 5.1-5.3): SGD, momentum 0.9, Nesterov, coupled weight decay 3e-4 on
every parameter, peak lr 5e-4 (no batch scaling), 80 epochs; micro-batches of 8 with 4
accumulated per optimiser step (global batch 32, each micro-batch with its own BatchNorm
statistics); each epoch ends with its partial batch (CUB: 188 steps, the last of 10
images in micro-batches of 8 and 2, their losses divided by 2); the lr is set per
micro-batch: np.linspace(1e-9, 5e-4) over 1500 micro-batches (2 CUB epochs of 750), then
a cosine whose half-period is the whole run (80 x 750 micro-batches, not minus the
warm-up), so it ends near 7.7e-7 instead of 0.

Data (spec 5.4): train views squash the image to 510 x 510 (aspect ignored) and take a
uniformly placed 384 px crop (`crop='squash_random_crop'`, set by the method), flip, p = 0.1
Gaussian blur (kernel 5, sigma U(0.1, 5)), p = 0.1 sharpness 1.5, ImageNet mean/std; no
colour jitter, mixup or label smoothing. Test: squash to 510 x 510, centre crop 384
(`config.data.eval_resize='squash'`). Evaluation (spec 6): the `herbs` evaluator's
`vote/top1` (sum of 9 softmaxes) is the paper's number (93.1 %), with HERBS' CUB group
outer errors; `comb_outs/top1` is the combiner alone.

Not reproduced yet:
  * Decoding: HERBS decodes every image at full size (OpenCV) and blurs / sharpens uint8
    PIL images; fgjax decodes JPEGs of at least 1020 px on both sides at a reduced DCT
    scale (1/2, 1/4, 1/8: still >= 510 px), and blurs / sharpens in float32 on the device
    (the sharpening within 1/255 of PIL's).
  * Swin's final LayerNorm (unused by HERBS, so it gets no gradient) still decays with the
    coupled weight decay; PyTorch skips parameters without gradients (spec 10.8).
  * Model selection on the test split (spec 5.5): fgjax evaluates on the same schedule and
    eval.json's `best` names the best epoch, but the run ends with the last epoch's weights.
"""

from fgjax.config import default_config


def get_config():
    c = default_config("herbs")
    c.data.kind = "cub"
    c.data.root = "data/CUB_200_2011"
    c.data.image_size = 384  # spec 5.1 data_size
    c.data.eval_resize = "squash"  # spec 5.4 test: Resize((510, 510)) + CenterCrop(384)
    c.data.eval_squash_size = 510
    c.eval.class_groups = "herbs_cub"  # spec 6.2 fine-class accuracy and outer errors
    c.eval.best_metric = "herbs/vote/top1"
    # Spec 5.5: after the first epoch, every 10, every 2 from epoch 64, every one from 72.
    c.eval.every_epochs = 10
    c.eval.every_epochs_from = ((0.8, 2), (0.9, 1))
    c.eval.after_first_epoch = True

    c.model.arch = "swin_large_patch4_window12_384"  # spec 2.1
    c.model.drop_path_rate = 0.1  # spec 2.2 (timm default, not overridden by HERBS)
    c.model.remat = True  # memory only (spec 11); same parameters and numerics

    # c.herbs: the method's defaults are spec 5.1 (fpn_size, num_selects, weights, T).

    c.optim.name = "sgd"  # spec 5.1
    c.optim.lr = 5e-4  # max_lr
    c.optim.lr_batch_reference = 0  # no batch scaling
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 3e-4  # wdecay, coupled (added to the gradient)
    c.optim.weight_decay_mask = "all"  # one parameter group
    c.optim.schedule = "cosine"  # spec 5.2
    c.optim.schedule_unit = "micro_batch"
    c.optim.warmup_epochs = 2.0  # 1500 micro-batches / 750 per CUB epoch
    c.optim.warmup_init_lr = 1e-9  # np.linspace(1e-9, max_lr, 1500)
    c.optim.warmup_reaches_peak = "last"
    c.optim.cosine_period = "whole"
    c.optim.final_lr = 1e-12

    c.train.batch_size = 32  # 8 per micro-batch (spec 5.1 batch_size) x 4 (update_freq)
    c.train.accumulate_steps = 4  # spec 5.3
    c.train.keep_last_batch = True  # drop_last=False, the ragged group divided by its size
    c.train.num_epochs = 80  # spec 5.1 max_epochs
    c.eval.batch_size = 32
    return c
