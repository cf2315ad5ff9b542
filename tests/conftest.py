"""Shared fixtures: tiny configs so every test compiles small shapes on the CPU."""

from __future__ import annotations

import os

# Tiny models on the CPU: compiling dominates every test, and LLVM's optimisation costs
# more compile time than it saves at run time: at XLA's CPU optimisation level 0 the suite
# takes about 11 minutes on 2 cores, at level 1 about 15. The suite passes at both (no
# test holds a number that only one level or CPU produces; tests/test_finite_steps*.py
# run every method's step at the other level too). FGJAX_TEST_XLA_LEVEL picks the level
# (default 0), FGJAX_TEST_XLA_OPT=1 keeps XLA's default (3). Set before jax is imported;
# subprocesses and the notebooks' kernels inherit it.
XLA_LEVEL = int(os.environ.get("FGJAX_TEST_XLA_LEVEL", "0"))
if not os.environ.get("FGJAX_TEST_XLA_OPT"):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_backend_optimization_level={XLA_LEVEL}"
    ).strip()

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


def tiny_config(method: str = "moco"):
    """A default config of `method` shrunk to a 2-stage width-4 ResNet on 16 px
    procedural images."""
    from fgjax.config import default_config

    c = default_config(method)
    c.model.overrides.stage_sizes = (1, 1)
    c.model.overrides.width = 4
    c.model.dtype = "float32"
    c.data.kind = "procedural"
    c.data.image_size = 16
    c.data.num_workers = 0
    c.data.procedural.num_coarse = 2
    c.data.procedural.fine_per_coarse = 2
    c.data.procedural.images_per_class = 8
    c.data.procedural.image_size = 16
    if method == "moco":
        c.moco.hidden_dim = 16
        c.moco.dim = 8
        c.moco.queue_size = 32
        c.moco.bn_groups = 2
    if method == "byol":
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


def tiny_lcr_config():
    """`tiny_config('lcr')` with a head and queue to match."""
    c = tiny_config("lcr")
    c.lcr.update(dict(hidden_dim=16, dim=8, queue_size=32, bn_groups=1))
    return c


@pytest.fixture(scope="session")
def tiny_lcr_run(tmp_path_factory) -> str:
    """The workdir of a tiny LCR run trained for 2 epochs (2 steps each), checkpoints at
    steps 2 and 4; trained once per session (viz and linear-probe tests read it)."""
    from fgjax.train.loop import train_and_evaluate

    config = tiny_lcr_config()
    config.eval.enabled = False
    workdir = str(tmp_path_factory.mktemp("tiny_lcr") / "run")
    train_and_evaluate(config, workdir)
    return workdir


def tiny_herbs_config():
    """`tiny_config('herbs')` on a 2-stage width-8 Swin at 32 px: both taps are 4 x 4 tokens
    of 16 channels; 6 selected tokens make 2 graph nodes."""
    import ml_collections

    c = tiny_config("herbs")
    c.model.arch = "swin_tiny_patch4_window7_224"
    c.model.overrides = ml_collections.ConfigDict(
        dict(embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=4, img_size=32)
    )
    c.model.drop_path_rate = 0.0
    c.data.image_size = 32
    c.herbs.update(fpn_size=8, num_selects=(4, 2), tokens_per_node=3, comb_dropout=0.0)
    return c


@pytest.fixture(scope="session")
def tiny_herbs_run(tmp_path_factory) -> str:
    """The workdir of a tiny HERBS run trained for 1 epoch of 2 steps (checkpoint at step
    2); trained once per session (the heat-map and report tests read it)."""
    from fgjax.train.loop import train_and_evaluate

    config = tiny_herbs_config()
    config.train.num_epochs = 1
    config.eval.enabled = False
    workdir = str(tmp_path_factory.mktemp("tiny_herbs") / "run")
    train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture
def shared_data() -> str:
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real sample data not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


def shared_path(*parts: str) -> str:
    """A path under ../shared/data; the test skips, saying which, when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real sample {path} not found (../shared/data beside the repo)")
    return path


@pytest.fixture(scope="module")
def cub_root() -> str:
    """The official-layout CUB-200-2011 sample (skips when absent)."""
    return shared_path("cub200_official_sample")


def index_table(path: str) -> dict[str, str]:
    """An 'id value...' index file (CUB layout) as {id: rest of the line}, read
    independently of fgjax's readers."""
    with open(path) as f:
        return dict(line.split(None, 1) for line in f if line.strip())


def data_config(kind: str, root: str, **fields):
    """`config.data` of the default config for `kind` at `root`, with `fields` set."""
    from fgjax.config import data_config as make

    return make(kind, root, **fields)


def run_info(config, num_classes: int = 4, steps_per_epoch: int = 5, num_epochs: int = 2):
    """A RunInfo for unit tests that build a method without a dataset."""
    from fgjax.methods import RunInfo

    return RunInfo(
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * num_epochs,
        batch_size=config.train.batch_size,
        num_classes=num_classes,
        num_coarse_classes=2,
        num_train_examples=steps_per_epoch * config.train.batch_size,
    )


def jitted_step(config, run, schedule=None, seed: int = 0):
    """`(method, state, frozen, step, mesh)` of `config` on the default mesh: the real
    `create_train_state` + `make_train_step` + `jit_train_step`."""
    from fgjax.config import photometric_spec
    from fgjax.core.sharding import make_mesh, put_replicated
    from fgjax.methods import build_method
    from fgjax.train import optim
    from fgjax.train.state import create_train_state
    from fgjax.train.step import jit_train_step, make_train_step

    method = build_method(config, run)
    if schedule is None:
        schedule = optim.make_schedule(
            config.optim, config.train.batch_size, run.steps_per_epoch, config.train.num_epochs
        )
    tx = optim.make_optimizer(config.optim, schedule)
    mesh = make_mesh()
    size = config.views[method.view_names[0]].size
    state = put_replicated(create_train_state(method, tx, (2, size, size, 3), seed=seed), mesh)
    frozen = put_replicated(method.init_frozen(), mesh)
    specs = {name: photometric_spec(config, name) for name in method.view_names}
    step = jit_train_step(
        make_train_step(method, tx, specs, run, config.train.accumulate_steps), mesh
    )
    return method, state, frozen, step, mesh


def normalized(images, spec):
    """uint8 images as the train step feeds the network: (x / 255 - mean) / std, float32."""
    import numpy as np

    return ((images / 255.0 - np.asarray(spec.mean)) / np.asarray(spec.std)).astype(np.float32)


def random_batch(rng, view_names, batch_size: int, size: int, num_classes: int = 4) -> dict:
    """A batch of random uint8 views and labels in the loader's layout."""
    import numpy as np

    return {
        "views": {
            name: rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
            for name in view_names
        },
        "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
        "coarse_label": np.zeros(batch_size, np.int32),
        "index": np.arange(batch_size, dtype=np.int32),
    }


@pytest.fixture(scope="module")
def module_compilation_cache(tmp_path_factory):
    """A persistent jax compilation cache for one test module: functions jitted anew (a new
    method, a new command-line call) that compile to an earlier program load it instead."""
    import jax

    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    before = {name: getattr(jax.config, name) for name in names}
    values = (str(tmp_path_factory.mktemp("jax_cache")), 0, 0)
    for name, value in zip(names, values, strict=True):
        jax.config.update(name, value)
    yield
    for name, value in before.items():
        jax.config.update(name, value)
