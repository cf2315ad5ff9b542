"""Fault injection: SIGKILL at random steps and in the middle of an async save, a truncated
or corrupted newest checkpoint, a full disk during a save. Each interrupted run, rerun, ends
with the uninterrupted run's train state bit for bit (one reference run for the module)."""

import asyncio
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, tiny_config

from fgjax.train.checkpoint import Checkpointer, CheckpointSaveError, read_saved_state
from fgjax.train.loop import train_and_evaluate

TESTS = os.path.dirname(os.path.abspath(__file__))
# 6 epochs x 2 steps, a checkpoint every 2 steps (3 kept). The 2^18-entry MoCo queue makes
# the state 8 MB, so a save lasts long enough to be killed in.
FIELDS = {"train.num_epochs": 6, "eval.enabled": False, "moco.queue_size": 2**18}
TOTAL = 12
TMP = ".orbax-checkpoint-tmp"

pytestmark = pytest.mark.usefixtures("module_compilation_cache")


def _config():
    c = tiny_config("moco")
    for name, value in FIELDS.items():
        section, field = name.split(".")
        c[section][field] = value
    return c


def _state(workdir) -> dict[str, np.ndarray]:
    """The newest checkpoint's whole train state, flattened: step, params, optimiser,
    BN statistics, queue, rng."""
    saved, step = read_saved_state(str(workdir))
    leaves = jax.tree_util.tree_flatten_with_path(saved)[0]
    return {"checkpoint": np.asarray(step), **{jax.tree_util.keystr(p): v for p, v in leaves}}


def _assert_equal_to(reference, workdir) -> None:
    expected, got = reference["state"], _state(workdir)
    assert int(got["checkpoint"]) == TOTAL and set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    # each step logged once, with the uninterrupted run's loss
    logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in logged] == list(range(1, TOTAL + 1))
    assert [r["loss"] for r in logged] == reference["losses"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, module_compilation_cache):
    workdir = tmp_path_factory.mktemp("faults") / "straight"
    train_and_evaluate(_config(), str(workdir))
    losses = [json.loads(line)["loss"] for line in open(workdir / "metrics.jsonl")]
    return {"workdir": workdir, "state": _state(workdir), "losses": losses}


# ----------------------------------------------------------------- SIGKILL


def _start(recipe: str, workdir, log) -> subprocess.Popen:
    # conftest's XLA_FLAGS too; unbuffered, so the log shows "resumed from step" at once
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    # The module's compilation cache: the runs load the reference run's programs.
    env.update(
        JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    # At the lowest priority, so that on a busy machine the test's polling sees each step
    # and save before the run moves on.
    command = ["nice", "-n", "19", sys.executable, "-m", "fgjax.cli.train"]
    command += [f"--config={recipe}", f"--workdir={workdir}"]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _poll(proc: subprocess.Popen, log_path, ready, timeout: float = 600.0, pause=0.01):
    """Call `ready()` until it is true; fails if the run ends first."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"run ended or hung (rc {proc.poll()}):\n{log_path.read_text()}")
        time.sleep(pause)


def _logged_step(workdir) -> int:
    """The last step in metrics.jsonl (0 before the first)."""
    try:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    complete = [line for line in lines if line.endswith("}")]
    return json.loads(complete[-1])["step"] if complete else 0


def _saving(workdir) -> list[str]:
    """The checkpoint folders being written (orbax's temporary names)."""
    try:
        return [n for n in os.listdir(workdir / "checkpoints") if TMP in n]
    except FileNotFoundError:
        return []


def _complete(workdir) -> list[str]:
    """The complete checkpoint steps' folders."""
    try:
        return [n for n in os.listdir(workdir / "checkpoints") if n.isdigit()]
    except FileNotFoundError:
        return []


def _resumed_from(log_path) -> int | None:
    found = re.search(r"resumed from step (\d+)", log_path.read_text())
    return int(found.group(1)) if found else None


def test_sigkill_at_a_random_step_and_mid_save_then_resume_bit_equal(tmp_path, reference):
    lines = "\n".join(f"    c.{k} = {v!r}" for k, v in FIELDS.items())
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom conftest import tiny_config\n\n"
        f"def get_config():\n    c = tiny_config('moco')\n{lines}\n    return c\n"
    )
    workdir = tmp_path / "run"
    rng = np.random.default_rng(19)
    logs = [tmp_path / f"run{i}.log" for i in range(3)]

    def start(i: int) -> subprocess.Popen:
        with open(logs[i], "w") as log:
            return _start(str(recipe), workdir, log)

    # 1: killed once it has logged a random step after its first checkpoint
    proc = start(0)
    at = int(rng.integers(3, 6))
    _poll(proc, logs[0], lambda: _logged_step(workdir) >= at and _complete(workdir))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, logs[0].read_text()

    # 2: resumed, then killed the moment a step's temporary folder appears (after a
    # random number of further steps), while orbax writes it
    proc = start(1)
    _poll(proc, logs[1], lambda: _resumed_from(logs[1]) is not None)
    first = _resumed_from(logs[1])
    assert first is not None and first <= at
    at = first + int(rng.integers(0, 4))
    _poll(proc, logs[1], lambda: _logged_step(workdir) >= at)
    _poll(proc, logs[1], lambda: _saving(workdir), pause=0.0005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, logs[1].read_text()
    half_written = _saving(workdir)
    assert half_written, "the save finished before the kill landed"
    killed_save = int(half_written[0].split(".")[0])

    # 3: resumes from the step before the half-written one (which it removes) and finishes
    proc = start(2)
    assert proc.wait(timeout=600) == 0, logs[2].read_text()
    assert _resumed_from(logs[2]) == killed_save - 2
    assert not _saving(workdir)
    _assert_equal_to(reference, workdir)


# ----------------------------------------------------------------- corrupted checkpoint


def _damage_silently(path: str, workdir, reference) -> None:
    """Overwrite 4 KiB of `path` at the first of 10 %, 20 %, ... of its length where the
    checkpoint still reads back without an error (zstd keeps no checksums) but its values
    differ from the reference run's: the damage only the saved digest reveals."""
    original = open(path, "rb").read()
    garbage = np.random.default_rng(0).bytes(4096)
    for tenth in range(1, 10):
        at = len(original) * tenth // 10
        with open(path, "wb") as f:
            f.write(original[:at] + garbage + original[at + 4096 :])
        try:
            read, _ = read_saved_state(str(workdir))
        except Exception:  # noqa: BLE001 - the decoder noticed: not silent
            continue
        leaves = jax.tree_util.tree_flatten_with_path(read)[0]
        if any(
            not np.array_equal(v, reference["state"][jax.tree_util.keystr(p)]) for p, v in leaves
        ):
            return
    pytest.fail(f"no silent damage found in {path}")


@pytest.mark.parametrize("damage", ["truncated", "whole file", "inside the data"])
def test_a_corrupted_newest_checkpoint_is_set_aside_and_the_run_ends_bit_equal(
    tmp_path, capsys, reference, damage
):
    workdir = tmp_path / "run"
    shutil.copytree(reference["workdir"], workdir)
    newest = workdir / "checkpoints" / str(TOTAL)
    files = [os.path.join(d, n) for d, _, names in os.walk(newest / "state") for n in names]
    biggest = max(files, key=os.path.getsize)  # the arrays' data (the queue's file)
    if damage == "truncated":  # every file of the state cut to a third (a copy cut short)
        for path in files:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 3)
    elif damage == "whole file":  # garbage, the length unchanged: the decoder fails
        with open(biggest, "r+b") as f:
            f.write(np.random.default_rng(0).bytes(os.path.getsize(biggest)))
    else:  # 4 KiB inside the data that orbax reads back without an error, wrong values
        _damage_silently(biggest, workdir, reference)
    train_and_evaluate(_config(), str(workdir))
    out = capsys.readouterr().out
    assert f"checkpoint {newest} cannot be restored" in out
    if damage == "inside the data":
        assert "digest mismatch" in out
    assert f"moved to {workdir / 'corrupt_checkpoints' / str(TOTAL)}" in out
    assert f"resumed from step {TOTAL - 2}" in out
    assert (workdir / "corrupt_checkpoints" / str(TOTAL) / "state").is_dir()
    _assert_equal_to(reference, workdir)


# ----------------------------------------------------------------- full disk


def test_a_full_disk_during_an_async_save_stops_clearly_and_the_rerun_ends_bit_equal(
    tmp_path, monkeypatch, reference
):
    workdir = tmp_path / "run"
    checkpoints = workdir / "checkpoints"
    original = ocp.JsonCheckpointHandler._save_fn

    def disk_full_at(failing: int):
        async def save_fn(self, item, directory):  # runs in orbax's background commit
            if f"{os.sep}checkpoints{os.sep}{failing}." in str(directory):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
            return await original(self, item, directory)

        monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", save_fn)

    config = _config()
    # The first save fails: the error surfaces when the loop waits for it at the end.
    disk_full_at(2)
    config.train.max_steps = 2
    with pytest.raises(CheckpointSaveError) as raised:
        train_and_evaluate(config, str(workdir))
    message = str(raised.value)
    assert f"could not write checkpoint {checkpoints / '2'} " in message
    assert "[Errno 28] No space left on device" in message
    assert "no checkpoint was complete yet: rerunning starts from step 0" in message
    assert isinstance(raised.value, OSError) and raised.value.errno == errno.ENOSPC
    assert (raised.value.step, raised.value.previous) == (2, None)
    # The half-written step is on disk under its temporary name, never taken as a step.
    assert _saving(workdir) == [f"2{TMP}"] and not _complete(workdir)

    # The rerun starts from step 0 (the log too); a save in the middle fails: the error
    # surfaces when the next save starts.
    disk_full_at(6)
    config.train.max_steps = 0
    with pytest.raises(CheckpointSaveError) as raised:
        train_and_evaluate(config, str(workdir))
    message = str(raised.value)
    assert f"could not write checkpoint {checkpoints / '6'} ([Errno 28] No space" in message
    assert f"step 4 ({checkpoints / '4'}), is intact and rerunning resumes from it" in message
    assert (raised.value.step, raised.value.previous) == (6, 4)
    # older steps not pruned, the leftover of step 2 removed, step 8's save never started
    assert sorted(os.listdir(checkpoints)) == ["2", "4", f"6{TMP}"]

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", original)
    train_and_evaluate(config, str(workdir))  # resumes from step 4
    _assert_equal_to(reference, workdir)


def test_a_failed_save_returns_only_once_all_its_writes_have_ended(tmp_path, monkeypatch):
    """orbax raises at the first failed item of a save while the others still write into
    the step's temporary folder; `wait` returns only once they have ended (else a rerun in
    the same process races with them: rmtree of the folder fails 'Directory not empty')."""
    original = ocp.JsonCheckpointHandler._save_fn
    ended = []

    async def save_fn(self, item, directory):
        if f"{os.sep}data{TMP}" in str(directory):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        if f"{os.sep}log{TMP}" in str(directory):
            await asyncio.sleep(1.0)  # still writing when the data item has failed
            ended.append(directory)
        return await original(self, item, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", save_fn)

    class Loader:
        def get_state(self) -> bytes:
            return b'{"position": 3}'

    checkpointer = Checkpointer(str(tmp_path), keep=2)
    state = {"w": np.arange(4.0)}
    checkpointer.save(2, state, Loader(), "{}", metrics_bytes=0)
    with pytest.raises(CheckpointSaveError, match=r"checkpoints/2 \(\[Errno 28\]"):
        checkpointer.wait()
    assert len(ended) == 1  # the slow item had finished when the error was raised
    checkpointer.close()
