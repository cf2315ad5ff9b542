"""The generic trainer: multi-device equivalence, kill-and-resume, Ctrl-C, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))
from run_steps import run  # noqa: E402

from fgjax.config import load_config_file, set_model_overrides, split_model_overrides  # noqa: E402
from fgjax.models.factory import backbone_from_config  # noqa: E402
from fgjax.train.loop import train_and_evaluate  # noqa: E402
from fgjax.train.metrics_log import read_metrics  # noqa: E402
from fgjax.train.run import apply_overrides  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))


def _env(devices: int = 1) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    flags = os.environ.get("XLA_FLAGS", "")  # conftest's, so both sides compile alike
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    return env


@pytest.mark.parametrize("method", ["moco", "byol"])
def test_eight_device_step_equals_single_device_step(method, tmp_path):
    out = tmp_path / "eight.npz"
    subprocess.run(
        [sys.executable, os.path.join(TESTS, "scripts", "run_steps.py"), method, str(out)],
        check=True,
        env=_env(8),
        cwd=REPO,
    )
    eight = dict(np.load(out))
    assert int(eight.pop("__devices__")) == 8
    assert jax.device_count() == 1
    single = run(method)
    assert set(single) == set(eight)
    for name, value in single.items():
        np.testing.assert_allclose(eight[name], value, rtol=2e-4, atol=2e-5, err_msg=name)


def _write_recipe(tmp_path, **fields) -> str:
    lines = "\n".join(f"    c.{k} = {v!r}" for k, v in fields.items())
    path = tmp_path / "recipe.py"
    path.write_text(
        f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom conftest import tiny_config\n\n"
        f"def get_config():\n    c = tiny_config('moco')\n{lines}\n    return c\n"
    )
    return str(path)


def _main(recipe: str, workdir, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fgjax.cli.train",
            f"--config={recipe}",
            f"--workdir={workdir}",
            *extra,
        ],
        env=_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _final_state(workdir) -> dict[str, np.ndarray]:
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    leaves = jax.tree_util.tree_flatten_with_path(restored.state)[0]
    return {"step": step, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}}


def _wait_for_checkpoint(workdir, proc, timeout=120.0) -> None:
    ckpt = os.path.join(workdir, "checkpoints")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isdir(ckpt) and any(name.isdigit() for name in os.listdir(ckpt)):
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_and_ctrl_c_then_resume_equal_an_uninterrupted_run(tmp_path, monkeypatch):
    # 16 epochs x 2 steps of 8 images; checkpoints every 2 steps.
    recipe = _write_recipe(
        tmp_path, **{"train.num_epochs": 16, "eval.enabled": False, "data.num_workers": 2}
    )
    # One compilation cache for the four runs: the later ones load the first one's programs
    # (the same executables, so the same numbers) instead of compiling them again.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    straight = _main(recipe, tmp_path / "straight")
    assert straight.wait(timeout=300) == 0, straight.stdout.read()
    total = _final_state(tmp_path / "straight")["step"]
    assert total == 16 * 2

    workdir = tmp_path / "interrupted"
    proc = _main(recipe, workdir)
    _wait_for_checkpoint(workdir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = _final_state(workdir)["step"]
    assert killed_at < total, "the run finished before it could be killed"

    proc = _main(recipe, workdir)  # resumes; stop it with a Ctrl-C this time
    out = ""
    while True:
        line = proc.stdout.readline()
        out += line
        if "resumed from step" in line or not line:
            break
    # To the trainer alone: a terminal's Ctrl-C also reaches the data workers, which ignore
    # it unless it lands while one starts (then the trainer waits for it until a second
    # Ctrl-C): a race this test would inherit.
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out += proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out  # saved, one line, the shell's Ctrl-C status
    assert "SIGINT: saved step" in out and "Traceback" not in out and "leaked" not in out, out

    proc = _main(recipe, workdir)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "resumed from step" in log, log

    expected, got = _final_state(tmp_path / "straight"), _final_state(workdir)
    assert expected["step"] == got["step"] == total
    assert set(expected) == set(got)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # Each step logged once, with the uninterrupted run's numbers: a resume cuts the log
    # back to the checkpoint it starts from (the steps after it run again).
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in logged]
    assert steps == sorted(set(steps)) and steps[-1] == total, steps
    straight_log = {r["step"]: r for r in read_metrics(str(tmp_path / "straight"))}
    assert [r["loss"] for r in logged] == [straight_log[s]["loss"] for s in steps]


def test_unknown_config_field_is_an_error_naming_it():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fgjax.cli.train",
            "--config=configs/demo.py",
            "--config.optim.lrr=0.1",
        ],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "unknown config field config.optim.lrr" in proc.stderr
    assert "config.optim.lr" in proc.stderr.split("did you mean")[1]


def test_model_overrides_take_any_field_of_the_architectures_module(tmp_path):
    argv = ["--config.model.overrides.stage_sizes=(1,)", "--config.model.overrides.width=4"]
    rest, fields = split_model_overrides([*argv, "--config.optim.lr=0.1"])
    assert rest == ["--config.optim.lr=0.1"]
    assert fields == {"stage_sizes": "(1,)", "width": "4"}
    config = load_config_file(os.path.join(REPO, "configs", "cub_lcr.py"))
    assert not config.model.overrides  # the recipe lists none
    config.lock()
    set_model_overrides(config, {**fields, "block": "basic", "bn_epsilon": "1"})
    assert dict(config.model.overrides) == {
        "stage_sizes": (1,),
        "width": 4,
        "block": "basic",  # a string field takes the text as it is
        "bn_epsilon": 1.0,  # an int for a float field
    }
    config.model.overrides = ml_collections.ConfigDict()
    set_model_overrides(config, fields)
    backbone = backbone_from_config(config.model)
    assert (backbone.stage_sizes, backbone.width) == ((1,), 4)
    # Each field is checked against the module config.model.arch names.
    errors = {
        "resnet50 has no field 'widht' \\(did you mean width\\?\\)": {"widht": "4"},
        "overrides.width .*is a int, got '4.5'": {"width": "4.5"},
        "overrides.stage_sizes .*is a tuple, got '3'": {"stage_sizes": "3"},
    }
    for message, bad in errors.items():
        with pytest.raises(ValueError, match=message):
            set_model_overrides(config, bad)
    config.model.arch = "swin_tiny_patch4_window7_224"
    with pytest.raises(ValueError, match="swin_tiny.* has no field 'width'"):
        set_model_overrides(config, {"width": "4"})
    set_model_overrides(config, {"embed_dim": "12", "depths": "[1, 1]"})
    assert config.model.overrides.depths == (1, 1)
    # python -m fgjax.eval / fgjax.methods.leadpp.ddt read them through apply_overrides.
    config = load_config_file(os.path.join(REPO, "configs", "cub_lcr.py"))
    apply_overrides(config, [*argv, "--config.lcr.dim=8"])
    assert (config.model.overrides.width, config.lcr.dim) == (4, 8)
    # fgjax.cli.train: the same error, one line, before any training.
    proc = _main("configs/demo.py", tmp_path / "run", "--config.model.overrides.widht=4")
    out = proc.communicate()[0]
    assert proc.returncode == 1 and "Traceback" not in out
    assert "error: unknown config.model.overrides.widht" in out
    assert "did you mean width?" in out and not (tmp_path / "run").exists()


def test_a_broken_recipe_or_a_negative_length_is_one_named_error(tmp_path):
    broken, empty = tmp_path / "broken.py", tmp_path / "empty.py"
    broken.write_text("def get_config():\n    return (\n")
    empty.write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"broken.py, line 2: .*must be Python"):
        load_config_file(str(broken))
    with pytest.raises(ValueError, match=r"empty.py: a recipe file defines get_config\(\)"):
        load_config_file(str(empty))
    proc = _main(str(broken), tmp_path / "r")
    out = proc.communicate()[0]
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert out.strip().splitlines()[-1].startswith(f"error: {broken}, line 2:")
    # A negative length was a "trained" untrained network (exit 0): refused before any work.
    for field in ("num_epochs", "max_steps"):
        config = load_config_file(os.path.join(REPO, "configs", "demo.py"))
        config.train[field] = -1
        with pytest.raises(ValueError, match=rf"config.train.{field}=-1 must be >= 0"):
            train_and_evaluate(config, str(tmp_path / field))
        assert not (tmp_path / field).exists()


def test_wrong_type_override_is_an_error_naming_the_field():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fgjax.cli.train",
            "--config=configs/demo.py",
            "--config.train.batch_size=many",
        ],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "config.train.batch_size" in proc.stderr


def test_a_user_error_is_one_line_and_leaves_no_empty_workdir(tmp_path):
    """A missing dataset root: `error: ...` naming the field, exit status 1, no traceback,
    no workdir left behind; `--debug` shows the traceback."""
    args = ["--config=configs/cub_moco.py", f"--config.data.root={tmp_path / 'missing'}"]
    for debug in (False, True):
        workdir = tmp_path / f"run_{debug}"
        proc = subprocess.run(
            [sys.executable, "-m", "fgjax.cli.train", *args, f"--workdir={workdir}"]
            + (["--debug"] if debug else []),
            env=_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1, proc.stderr
        assert ("Traceback" in proc.stderr) == debug, proc.stderr
        assert "config.data.root=" in proc.stderr and "images.txt" in proc.stderr
        if not debug:
            assert proc.stderr.strip().splitlines()[-1].startswith("error: config.data.kind='cub'")
        assert not workdir.exists()


def test_a_scalar_for_a_pair_field_names_the_field_and_no_workdir_stays(tmp_path):
    from conftest import tiny_config

    from fgjax.train.loop import train_and_evaluate

    config = tiny_config("moco")
    config.views.view2.crop_scale = (0.5,)  # what --config.views.view2.crop_scale=0.5 gives
    with pytest.raises(ValueError, match=r"config.views.view2.crop_scale must be two numbers"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays
    with pytest.raises(ValueError):
        train_and_evaluate(config, str(tmp_path / "kept"))
    assert (tmp_path / "kept").is_dir()


def test_every_recipe_loads_and_accepts_overrides():
    from fgjax.config import check_override_names, load_config_file
    from fgjax.methods import registered_methods

    for name in sorted(os.listdir(os.path.join(REPO, "configs"))):
        if name.endswith(".py"):
            config = load_config_file(os.path.join(REPO, "configs", name))
            check_override_names(config, ["--config.optim.lr=0.5", "--config.data.root=x"])
            assert config.method in registered_methods(), name


def test_init_from_torchvision_file_seeds_online_and_key_encoders(tmp_path):
    """`config.model.init_from` loads a torchvision-layout .pth into the backbone before
    the key encoder is copied from it."""
    from conftest import run_info, tiny_config

    from fgjax.methods import backbone_variables, build_method
    from fgjax.models.factory import backbone_from_config
    from fgjax.train import optim
    from fgjax.train.state import create_train_state
    from fgjax.weights import export_torch

    config = tiny_config("moco")
    donor = backbone_from_config(config.model).init(
        jax.random.PRNGKey(42), np.zeros((1, 16, 16, 3), np.float32), train=False
    )
    donor = jax.tree.map(lambda x: np.asarray(x) + 0.5, dict(donor))  # distinct stats too
    path = str(tmp_path / "backbone.pth")
    export_torch(path, donor, "resnet")
    config.model.init_from = path
    method = build_method(config, run_info(config, num_classes=2))
    tx = optim.make_optimizer(config.optim, lambda s: 0.1)
    state = create_train_state(method, tx, (2, 16, 16, 3), seed=0, init_from=path)
    key = state.method_state
    for tree in (
        backbone_variables(state.params, state.model_state),
        backbone_variables(key["key_params"], key["key_model_state"]),
    ):
        for got, want in zip(jax.tree.leaves(tree), jax.tree.leaves(donor), strict=True):
            np.testing.assert_array_equal(np.asarray(got), want)


def test_end_of_training_eval_matches_a_brute_force_recomputation(tmp_path):
    """eval.json's Recall@1 and kNN equal numpy on features recomputed image by image."""
    import json

    from conftest import run_info, tiny_config

    from fgjax.data.datasets import build_source
    from fgjax.data.decode import resize_center_crop
    from fgjax.methods import build_method
    from fgjax.train.loop import train_and_evaluate

    config = tiny_config("moco")
    config.train.max_steps = 2
    config.eval.at_start = True
    config.eval.batch_size = 6  # does not divide the 16 test images: exercises the padding
    result = train_and_evaluate(config, str(tmp_path))
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["step"] == 2 and set(saved["initial"]) == set(result["eval"])

    state, source = result["state"], build_source(config.data, "test")
    method = build_method(config, run_info(config, num_classes=source.num_classes))
    spec = config.views.view1.photometric
    mean, std = np.array(spec.mean), np.array(spec.std)
    feats = []
    for i in range(len(source)):
        image = resize_center_crop(source[i], image_size=config.data.image_size)
        x = ((image.astype(np.float32) / 255 - mean) / std)[None].astype(np.float32)
        feats.append(np.asarray(method.embed(state.params, state.model_state, x))[0])
    f = np.stack(feats)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    labels = source.labels
    recall1 = np.mean(labels[sim.argmax(1)] == labels)
    np.testing.assert_allclose(saved["retrieval_recall@1"], recall1, atol=1e-6)
    # Leave-one-out weighted kNN, k=3, T=0.1 (tiny_config).
    top = np.argsort(-sim, axis=1)[:, :3]
    votes = np.zeros((len(f), source.num_classes))
    for q in range(len(f)):
        for j in top[q]:
            votes[q, labels[j]] += np.exp(sim[q, j] / 0.1)
    np.testing.assert_allclose(saved["knn_top1"], np.mean(votes.argmax(1) == labels), atol=1e-6)
