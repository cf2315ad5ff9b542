"""Reliability, round two (issue #30): one trainer per workdir, a signal before the first
step, an evaluation lost to a kill redone on resume, a damaged evaluation history named."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, tiny_config
from PIL import Image

from fgjax.train import loop
from fgjax.train.checkpoint import Checkpointer, CheckpointMismatchError
from fgjax.train.loop import train_and_evaluate
from fgjax.train.resume import ConfigChangedError, check_same_run
from fgjax.train.workdir_lock import LOCK_NAME, WorkdirInUseError, hold_workdir

pytestmark = pytest.mark.usefixtures("module_compilation_cache")


def _listing(workdir) -> dict[str, int]:
    """Every file under `workdir` with its size (what a refused run must leave alone)."""
    out = {}
    for folder, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, workdir)] = os.path.getsize(path)
    return out


def test_a_second_trainer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(
    tmp_path,
):
    workdir = tmp_path / "run"
    os.makedirs(workdir)
    (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
    before = _listing(workdir)
    # A live holder in another process; the lock holds its host and PID.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fgjax.train.workdir_lock import hold_workdir\n"
            "with hold_workdir(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)",
            str(workdir),
        ],
        env=dict(os.environ, PYTHONPATH=REPO),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirInUseError, match=f"pid {holder.pid}") as refused:
            train_and_evaluate(tiny_config("moco"), str(workdir))
        assert "another trainer" in str(refused.value) and str(workdir) in str(refused.value)
        assert {k: v for k, v in _listing(workdir).items() if k != LOCK_NAME} == before
    finally:
        holder.kill()  # SIGKILL: the kernel drops its flock
        holder.wait(timeout=60)
    with hold_workdir(str(workdir)):  # taken over without any staleness check
        text = (workdir / LOCK_NAME).read_text()
        assert f"pid {os.getpid()}" in text and f"pid {holder.pid}" not in text
        with pytest.raises(WorkdirInUseError):  # also refused within one process
            with hold_workdir(str(workdir)):
                pass


def test_sigterm_during_setup_stops_before_the_first_step_and_leaves_no_workdir(
    tmp_path, monkeypatch
):
    build = loop.Run.__init__

    def build_then_signal(self, config):
        build(self, config)
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's preemption during setup

    monkeypatch.setattr(loop.Run, "__init__", build_then_signal)
    workdir = tmp_path / "run"
    result = train_and_evaluate(tiny_config("moco"), str(workdir))
    assert result["stopped_by"] == "SIGTERM" and result["step"] == 0
    assert not result["finished"] and not workdir.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back


class _Killed(Exception):
    """Stands for a kill during an evaluation."""


def _periodic_config():
    c = tiny_config("moco")
    c.train.num_epochs = 3  # 2 steps per epoch
    c.train.checkpoint_every_steps = 2
    c.eval.every_epochs = 1
    return c


def test_an_evaluation_lost_to_a_kill_is_done_on_resume(tmp_path, monkeypatch):
    straight = train_and_evaluate(_periodic_config(), str(tmp_path / "straight"))
    expected = json.loads((tmp_path / "straight" / "eval.json").read_text())
    assert [e["epoch"] for e in expected["history"]] == [1, 2, 3]

    workdir = tmp_path / "killed"
    evaluate = loop.Evaluator.__call__

    def killed_at_epoch_one(self, state, periodic=False):
        if periodic and int(state.step) == 2:
            raise _Killed  # after checkpoint 2 was written, before epoch 1 was recorded
        return evaluate(self, state, periodic=periodic)

    monkeypatch.setattr(loop.Evaluator, "__call__", killed_at_epoch_one)
    with pytest.raises(_Killed):
        train_and_evaluate(_periodic_config(), str(workdir))
    assert not (workdir / "eval_history.json").exists()
    monkeypatch.undo()

    resumed = train_and_evaluate(_periodic_config(), str(workdir))
    got = json.loads((workdir / "eval.json").read_text())
    assert resumed["step"] == straight["step"] == 6
    assert got["history"] == expected["history"] and got["best_each"] == expected["best_each"]

    # A damaged history is named (every resume failed with a bare JSON message).
    history = workdir / "eval_history.json"
    history.write_text(history.read_text()[:-20])
    with pytest.raises(ValueError, match=f"{history} is damaged"):
        train_and_evaluate(_periodic_config(), str(workdir))
    assert not list(workdir.glob("*.partial"))  # the writes are atomic (a rename)


def test_config_constraints_of_the_evaluation_are_checked_before_the_first_step(tmp_path):
    # eval.batch_size not a multiple of the devices: was a raw sharding error after training.
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from conftest import tiny_config\n\n"
        "def get_config():\n    c = tiny_config('moco')\n    c.eval.batch_size = 3\n    return c\n"
    )
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fgjax.cli.train",
            f"--config={recipe}",
            f"--workdir={tmp_path / 'w'}",
        ],
        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS=flags),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1 and not (tmp_path / "w").exists(), out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "config.eval.batch_size=3 (per process)" in errors[0], out.stderr

    # Held-out test classes with the kNN bank on train: kNN could never be right on them.
    for split, classes in (("train", "ab"), ("test", "bc")):
        for name in classes:
            os.makedirs(tmp_path / "folders" / split / name)
            for i in range(4):
                Image.new("RGB", (20, 20)).save(tmp_path / "folders" / split / name / f"{i}.png")
    config = tiny_config("moco")
    config.data.kind, config.data.root = "image_folder", str(tmp_path / "folders")
    config.eval.knn_bank = "train"
    with pytest.raises(ValueError, match=r"1 test classes \(labels 2\) have no image in the train"):
        train_and_evaluate(config, str(tmp_path / "held_out"))
    assert not (tmp_path / "held_out").exists()


def test_a_field_added_by_a_newer_fgjax_is_named_as_such_on_resume():
    saved = {"lcr": {"alpha": 1.0}, "train": {"num_epochs": 2}}
    now = {"lcr": {"alpha": 1.0, "loss_device_groups": 0}, "train": {"num_epochs": 9}}
    with pytest.raises(ConfigChangedError) as refused:
        check_same_run(saved, now, "runs/x", 4)
    message = str(refused.value)
    assert "lcr.loss_device_groups: '<absent>' (saved) -> 0" in message
    assert "came with a newer fgjax" in message and "train.num_epochs: 2" not in message


def test_a_checkpoint_of_another_structure_is_refused_and_left_in_place(tmp_path):
    """A checkpoint that does not fit the model (another fgjax version's, say) was moved to
    corrupt_checkpoints/ and the run restarted from step 0; it is not damaged."""
    config = tiny_config("moco")
    config.train.max_steps, config.eval.enabled = 2, False
    workdir = tmp_path / "run"
    state = train_and_evaluate(config, str(workdir))["state"]
    kernel = state.params["backbone"]["conv1"]["kernel"]
    params = jax.tree.map(lambda x: x, state.params)
    params["backbone"]["conv1"]["kernel"] = np.zeros((*kernel.shape[:3], 8), np.float32)
    checkpointer = Checkpointer(str(workdir), keep=3)
    try:
        with pytest.raises(CheckpointMismatchError, match=r"conv1'\]\['kernel'\]: saved \(") as err:
            checkpointer.restore(state.replace(params=params), iterator=None)
    finally:
        checkpointer.close()
    assert "built (7, 7, 3, 8)" in str(err.value) and "left in place" in str(err.value)
    assert not (workdir / "corrupt_checkpoints").exists()
    assert (workdir / "checkpoints" / "2").is_dir()
