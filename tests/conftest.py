"""Shared fixtures: tiny configs so every test compiles small shapes on the CPU."""

from __future__ import annotations

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


def tiny_config(method: str = "moco"):
    """A default config shrunk to a 2-stage width-4 ResNet on 16 px procedural images."""
    from fgjax.config import default_config

    c = default_config()
    c.method = method
    c.model.stage_sizes = (1, 1)
    c.model.width = 4
    c.model.dtype = "float32"
    c.data.kind = "procedural"
    c.data.image_size = 16
    c.data.num_workers = 0
    c.data.procedural.num_coarse = 2
    c.data.procedural.fine_per_coarse = 2
    c.data.procedural.images_per_class = 8
    c.data.procedural.image_size = 16
    c.moco.hidden_dim = 16
    c.moco.dim = 8
    c.moco.queue_size = 32
    c.moco.bn_groups = 2
    c.byol.hidden_dim = 16
    c.byol.dim = 8
    c.train.batch_size = 8
    c.train.num_epochs = 2
    c.train.log_every_steps = 1
    c.train.checkpoint_every_steps = 2
    c.train.progress_bar = False
    c.eval.batch_size = 8
    c.eval.knn_k = 3
    c.eval.knn_bank = "test"
    return c


@pytest.fixture
def shared_data() -> str:
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real sample data not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA
