"""LEAD++ on CUB-200-2011, the code-faithful preset (../shared/methods/leadpp.md §10).

ResNet-50 (stem max-pool: 7x7 layer4 maps at 224 px) from torchvision's supervised
ImageNet V1 weights (`resnet50-19c8e357.pth`, query and key encoders), 2048-2048-512
head, two queues of 65,536, m 0.999 applied 3 times a step, T 0.27, alpha 0.5, L2
weight 0.1, beta 20, tau_d 0.02, CAM weight 0.0005, 2 loss/BN groups (the original's 2
GPUs of 32), L3's negatives after L2's enqueue (the original's bug). SGD lr 0.02, momentum
0.9, coupled weight decay 5e-4 on every parameter, per-epoch cosine without warm-up,
batch 64, 100 epochs, MoCo v2 augmentation (RandomResizedCrop scale (0.2, 1) bilinear)
on all four views, seed 123.

The per-epoch cosine: fgjax runs epoch e = 0..99 at 0.02 * (1 + cos(pi e / 100)) / 2
(0.02 first, 4.9e-6 last); the original runs e = 1..100 (0.019995 first, 0 last): the
same curve one epoch earlier.

Files: `ViT-B-16.pt` (OpenAI CLIP, the teacher), the original's text prototypes
`text_description_tensor/bird_text_tensor.pt` (200 x 512; or build them with
`fgjax text build`), and the DDT crops of every image at the same relative paths
under `data/cub_ddt_crops`, which `fgjax ddt` writes (views 3 and 4; '' would
read the originals). Switches: `--config.leadpp.l3_queue_snapshot=before_L2_enqueue`,
`ema_updates_per_step=1`, `teacher_norm=clip`, `embed_feature=rationale` (the linear
probe's mask-weighted descriptor; the default GAP is the original's retrieval feature).
"""

from fgjax.config import default_config, photometric_config
from fgjax.data.augment import moco_v2_spec


def get_config():
    c = default_config("leadpp")
    c.seed = 123
    c.model.arch = "resnet50"
    c.model.stem_maxpool = True
    c.model.init_from = "resnet50-19c8e357.pth"
    c.data.kind = "cub"
    c.data.root = "data/CUB_200_2011"
    c.data.image_size = 224
    # The original's test transform (linear_probing.py, retrieval.py): Resize((256, 256))
    # bilinear, aspect ignored, then CenterCrop(224).
    c.data.eval_resize = "squash"
    c.data.eval_squash_size = 256
    for name, view in c.views.items():  # view1, view2 originals; view3, view4 DDT crops
        view.crop_scale = (0.2, 1.0)
        view.interpolation = "bilinear"
        view.photometric = photometric_config(moco_v2_spec())
        if name in ("view3", "view4"):
            view.root = "data/cub_ddt_crops"
    s = c.leadpp
    s.update(dict(hidden_dim=2048, dim=512, queue_size=65536, momentum=0.999))
    s.update(dict(temperature=0.27, bn_groups=2, loss_device_groups=2))
    s.teacher_arch = "clip_vit_b16"
    s.teacher_weights = "ViT-B-16.pt"
    s.prototypes = "text_description_tensor/bird_text_tensor.pt"
    s.num_classes = 200
    c.optim.name = "sgd"
    c.optim.lr = 0.02
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.optim.weight_decay_mask = "all"
    c.optim.schedule = "cosine"
    c.optim.schedule_unit = "epoch"
    c.optim.warmup_epochs = 0.0
    c.train.batch_size = 64
    c.train.num_epochs = 100
    c.train.checkpoint_every_steps = 93  # one CUB epoch at batch 64
    c.eval.recall_ks = (1, 5)  # the original's retrieval: top-1, top-5 (and mAP)
    return c
