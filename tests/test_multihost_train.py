"""Multi-host training: two local CPU processes (4 devices each, a loopback coordinator)
train and evaluate like one process on 8 devices with the same global batch, each reading
only its own rows of every batch; killed both after a checkpoint, they resume."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from conftest import REPO
from test_multiprocess import _free_port
from test_train import _env, _write_recipe

from fgjax.train.checkpoint import read_saved_state

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "multihost_train.py")
DEVICES = 8


def _launch(recipe: str, workdir, processes: int, halt: int | None = None):
    """The processes of one run of `fgjax.cli.train` (recording the examples each consumed).
    A persistent compilation cache beside `workdir` (written by process 0, read by all)
    spares the resumed run its compiles."""
    port = _free_port()
    env = _env(DEVICES // processes)
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(workdir.parent / f"jax_cache_{processes}"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    procs = []
    for p in range(processes):
        flags = [f"--coordinator=localhost:{port}", f"--num_processes={processes}"]
        args = [SCRIPT, str(workdir / "consumed"), "-" if halt is None else str(halt), "--"]
        args += [f"--config={recipe}", f"--workdir={workdir}"]
        args += [*flags, f"--process_id={p}"] if processes > 1 else []
        procs.append(
            subprocess.Popen(
                [sys.executable, *args],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def _finish(procs) -> list[str]:
    outs = [proc.communicate(timeout=600)[0] for proc in procs]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out
    return outs


def _final_state(workdir) -> dict[str, np.ndarray]:
    """The newest checkpoint's step and train state (saved on 8 devices, read on 1)."""
    saved, step = read_saved_state(str(workdir))
    leaves = jax.tree_util.tree_flatten_with_path(saved)[0]
    return {"step": step, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}}


def _launches(workdir, process: int) -> list[list[list[int]]]:
    """The batches (example indices) `process` consumed, one list per launch."""
    launches = []
    with open(workdir / f"consumed.{process}.jsonl") as f:
        for line in f:
            entry = json.loads(line)
            if entry == "start":
                launches.append([])
            else:
                launches[-1].append(entry)
    return launches


def test_two_processes_train_evaluate_and_resume_like_one_process_on_eight_devices(tmp_path):
    # 2 epochs x 2 steps of 8 images (1 per device); checkpoints at steps 2 and 4.
    recipe = _write_recipe(tmp_path, **{"train.num_epochs": 2})
    one, two = tmp_path / "one", tmp_path / "two"
    reference = _launch(recipe, one, 1)
    halted = _launch(recipe, two, 2, halt=2)
    deadline = time.time() + 600
    while not (two / "checkpoints" / "2").is_dir():  # orbax renames it when complete
        assert time.time() < deadline and all(p.poll() is None for p in halted), [
            p.communicate()[0] for p in halted
        ]
        time.sleep(0.05)
    for proc in halted:  # both hosts die at once, no chance to save anything more
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert _final_state(two)["step"] == 2 and not (two / "eval.json").exists()
    outs = _finish(_launch(recipe, two, 2))
    assert "resumed from step 2" in outs[0]
    assert outs[1].count("\n") < outs[0].count("\n")  # process 1 prints nothing of its own
    _finish(reference)

    # Each process took its own half of every global batch: process 0 the first four rows,
    # process 1 the last four, before the kill and after the resume.
    (batches,) = _launches(one, 0)
    assert len(batches) == 4 and all(len(b) == 8 for b in batches)
    for p in range(2):
        before, after = _launches(two, p)
        assert before == [b[4 * p : 4 * p + 4] for b in batches[:2]], p
        assert after == [b[4 * p : 4 * p + 4] for b in batches[2:]], p

    # Same parameters (float tolerance: the all-reduce sums in another order across
    # processes), same loss at every step, same evaluation.
    expected, got = _final_state(one), _final_state(two)
    assert expected["step"] == got["step"] == 4 and set(expected) == set(got)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    logs = [
        {r["step"]: r["loss"] for r in map(json.loads, (w / "metrics.jsonl").open())}
        for w in (one, two)
    ]
    assert sorted(logs[1]) == [1, 2, 3, 4]  # each step once: process 0 alone writes
    np.testing.assert_allclose(
        [logs[1][s] for s in range(1, 5)], [logs[0][s] for s in range(1, 5)], rtol=1e-5
    )
    evals = [json.loads((w / "eval.json").read_text()) for w in (one, two)]
    for name in ("retrieval_recall@1", "retrieval_map", "knn_top1"):
        np.testing.assert_allclose(evals[1][name], evals[0][name], rtol=1e-5, err_msg=name)


def test_bad_process_settings_are_one_line_errors_naming_the_flag(monkeypatch):
    import pytest

    from fgjax.core.distributed import initialize

    with pytest.raises(ValueError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
        initialize("localhost:1", 2, 2)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match=r"JAX_NUM_PROCESSES='two' \(or --num_processes\)"):
        initialize("localhost:1", process_id=0)
    # Nothing given and no cluster detected: the message names what to give.
    env = {k: v for k, v in _env().items() if not k.startswith(("JAX_COORD", "JAX_NUM", "SLURM"))}
    proc = subprocess.run(
        [sys.executable, "-m", "fgjax.cli.train", "--multihost", "--workdir=unused"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    assert (
        proc.stderr.startswith("error: --multihost:") and "--coordinator=HOST:PORT" in proc.stderr
    )
