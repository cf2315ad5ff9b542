"""A method defined outside fgjax: found through `FGJAX_METHODS` (trained by `fgjax.main`,
evaluated by `fgjax.eval`) or through an entry point of group `fgjax.methods`; a module
that does not import is a clear error."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

import fgjax.methods
from fgjax.methods import ENV_VAR, discover, method_class
from fgjax.methods.base import _REGISTRY

TESTS = os.path.dirname(os.path.abspath(__file__))

# A complete method in one file, outside the package: a linear classifier on the
# backbone's pooled features, trained with cross-entropy.
METHOD_SOURCE = '''
"""An external method: fgjax imports it because FGJAX_METHODS names this module."""

import flax.linen as nn
import ml_collections

from fgjax.core.objectives import accuracy, cross_entropy
from fgjax.methods import LossAux, Method, apply_train, register
from fgjax.models.encoder import Encoder
from fgjax.models.factory import backbone_from_config


@register
class {cls}(Method):
    name = "{name}"
    view_names = ("view1",)
    partial_batches_ok = True

    @classmethod
    def config_section(cls):
        return ml_collections.ConfigDict(dict(loss_scale=1.0))

    @classmethod
    def default_views(cls):
        return {{"view1": {{}}}}

    def __init__(self, config, run):
        super().__init__(config, run)
        self.net = Encoder(
            backbone=backbone_from_config(config.model),
            classifier=nn.Dense(run.num_classes, name="classifier"),
        )

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        out, model_state = apply_train(self.net, params, model_state, views["view1"])
        labels = batch["label"]
        loss = self.section.loss_scale * cross_entropy(out["logits"], labels)
        metrics = {{"loss": loss, "acc": accuracy(out["logits"], labels)}}
        return loss, LossAux(model_state, metrics, {{}})
'''


def _write_method(root, package: str, module: str, name: str, cls: str) -> None:
    folder = root / package
    folder.mkdir(exist_ok=True)
    (folder / "__init__.py").write_text("")
    (folder / f"{module}.py").write_text(METHOD_SOURCE.format(name=name, cls=cls))


@pytest.mark.slow
def test_a_method_named_in_fgjax_methods_trains_and_evaluates(tmp_path):
    _write_method(tmp_path, "my_methods", "linear_ce", "toy_external_ce", "LinearCE")
    recipe = tmp_path / "external_recipe.py"
    recipe.write_text(
        textwrap.dedent(
            """
            from fgjax.config import default_config


            def get_config():
                c = default_config("toy_external_ce")
                c.model.overrides.stage_sizes = (1, 1)
                c.model.overrides.width = 4
                c.model.dtype = "float32"
                c.data.kind = "procedural"
                c.data.image_size = 16
                c.data.num_workers = 0
                c.data.procedural.update(
                    dict(num_coarse=2, fine_per_coarse=2, images_per_class=8, image_size=16)
                )
                c.toy_external_ce.loss_scale = 0.5
                c.train.batch_size = 8
                c.train.num_epochs = 2
                c.train.max_steps = 2
                c.train.log_every_steps = 1
                c.train.checkpoint_every_steps = 2
                c.train.progress_bar = False
                c.eval.enabled = False  # fgjax.eval evaluates it below
                c.eval.batch_size = 8
                c.eval.knn_k = 3
                c.eval.knn_bank = "test"
                return c
            """
        )
    )
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]),
        **{ENV_VAR: "my_methods.linear_ce"},
    )
    workdir = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "fgjax.main", f"--config={recipe}", f"--workdir={workdir}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stdout + train.stderr
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["method"] == "toy_external_ce" and saved["toy_external_ce"]["loss_scale"] == 0.5
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "acc" in r] == [1, 2], logged
    assert any(n.isdigit() for n in os.listdir(workdir / "checkpoints"))
    # The evaluation command reads the run's config.json: it finds the method the same way.
    eval_cmd = [sys.executable, "-m", "fgjax.eval", f"--workdir={workdir}", "--protocol=retrieval"]
    evaluate = subprocess.run(
        [*eval_cmd, "--no-plots"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluate.returncode == 0, evaluate.stdout + evaluate.stderr
    evaluated = json.loads((workdir / "eval" / "eval.json").read_text())
    assert evaluated["step"] == 2 and 0.0 <= evaluated["retrieval_recall@1"] <= 1.0, evaluated
    # Without FGJAX_METHODS the run's method is unknown, and the error says where to name it.
    env.pop(ENV_VAR)
    lost = subprocess.run(
        [*eval_cmd, "--no-plots"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lost.returncode != 0
    assert "toy_external_ce" in lost.stderr and ENV_VAR in lost.stderr, lost.stderr


def test_a_bad_fgjax_methods_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "json, no_such_package_xyz.methods")
    with pytest.raises(ValueError, match=r"FGJAX_METHODS=.*'no_such_package_xyz\.methods'"):
        discover()
    with pytest.raises(ValueError, match="fails to import: ModuleNotFoundError"):
        method_class("supervised")
    monkeypatch.setenv(ENV_VAR, " , ")  # empty names are skipped
    assert method_class("supervised").name == "supervised"


def _fake_distribution(root, value: str) -> None:
    """An installed distribution (a .dist-info folder on sys.path) with one entry point."""
    info = root / "toy_fgjax_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-fgjax-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[fgjax.methods]\ntoy_plugin = {value}\n")


@pytest.fixture
def clean_registry(monkeypatch):
    """Forget the entry points read so far, and afterwards what this test registered."""
    monkeypatch.setattr(fgjax.methods, "_entry_points_loaded", False)
    before, modules = dict(_REGISTRY), set(sys.modules)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(before)
    for name in set(sys.modules) - modules:
        if name.startswith("toy_plugin_methods"):
            del sys.modules[name]


def test_an_entry_point_registers_its_method(tmp_path, monkeypatch, clean_registry):
    _write_method(tmp_path, "toy_plugin_methods", "plugin", "toy_entry_point", "ToyEntryPoint")
    _fake_distribution(tmp_path, "toy_plugin_methods.plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert method_class("toy_entry_point").__module__ == "toy_plugin_methods.plugin"


def test_a_broken_entry_point_is_a_clear_error(tmp_path, monkeypatch, clean_registry):
    _fake_distribution(tmp_path, "toy_plugin_methods.missing")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    match = r"entry point 'toy_plugin'.*'toy_plugin_methods\.missing'"
    with pytest.raises(ValueError, match=match):
        discover()
