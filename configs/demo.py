"""The embedded demo: MoCo v2 on a small ResNet and the procedural fine-grained dataset.

Nothing is downloaded: `fgjax.data.procedural` draws objects whose fine classes
differ in small details. Training uses the first half of the fine classes of every
coarse class; retrieval Recall@1 and kNN (leave-one-out) are measured on the
held-out fine classes, before and after training. Runs in a few minutes on a
2-core CPU.
"""

from fgjax.config import default_config


def get_config():
    c = default_config("moco")
    c.model.overrides.stage_sizes = (1, 1, 1, 1)
    c.model.overrides.width = 8
    c.model.dtype = "float32"
    c.data.kind = "procedural"
    c.data.image_size = 32
    for view in c.views.values():
        view.crop_scale = (0.3, 1.0)
    c.data.num_workers = 2
    c.data.procedural.images_per_class = 80  # 12 train classes: 960 images, 15 steps/epoch
    c.moco.hidden_dim = 256
    c.moco.dim = 64
    c.moco.queue_size = 512  # smaller than the training set, unlike LCR's 65,536 on CUB
    c.moco.bn_groups = 4
    c.moco.momentum = 0.99
    c.optim.lr = 0.06
    c.optim.warmup_epochs = 2.0
    c.train.batch_size = 64
    c.train.num_epochs = 200  # 3,000 steps: about 3.5 minutes on 2 CPU cores
    c.train.log_every_steps = 10
    c.train.checkpoint_every_steps = 100
    c.eval.at_start = True
    c.eval.knn_bank = "test"
    c.eval.knn_k = 20
    c.eval.batch_size = 128
    return c
