"""Data-loader worker processes end with their parent, however it ends (SIGKILL included),
and evaluation passes leave no process or file descriptor behind (issue #19)."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import REPO

from fgjax.data.eval_loader import make_eval_loader
from fgjax.data.procedural import ProceduralFineGrained

TESTS = os.path.dirname(os.path.abspath(__file__))
GRACE_S = 10.0  # what a dead parent's workers get to notice it (they take milliseconds)

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads processes in /proc")


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state letter, start time) of `pid` from /proc, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def _descendants(pid: int) -> dict[int, int]:
    """{pid: start time} of every live descendant of `pid`."""
    stats = {int(p): _stat(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for p, s in stats.items():
            if s is not None and s[0] == parent and p not in found:
                found[p] = s[2]
                frontier.append(p)
    return found


def _alive(procs: dict[int, int]) -> dict[int, str]:
    """{pid: command line} of the processes in `procs` ({pid: start time}) still running
    (zombies count as ended; a recycled pid has another start time)."""
    alive = {}
    for pid, start in procs.items():
        s = _stat(pid)
        if s is not None and s[2] == start and s[1] not in "ZX":
            alive[pid] = _cmdline(pid)
    return alive


def _wait_until_ended(procs: dict[int, int], grace: float = GRACE_S) -> dict[int, str]:
    """The processes of `procs` still running after at most `grace` seconds; kills those,
    so that a failing test leaves no orphans behind."""
    deadline = time.time() + grace
    while (left := _alive(procs)) and time.time() < deadline:
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _env() -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)


def test_a_sigkilled_trainer_leaves_no_process_behind(tmp_path):
    """The trainer (2 grain workers) is SIGKILLed after its first step: its workers and the
    multiprocessing resource tracker it started all end within the grace."""
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom conftest import tiny_config\n\n"
        "def get_config():\n    c = tiny_config('supervised')\n    c.train.num_epochs = 1000\n"
        "    c.eval.enabled = False\n    c.data.num_workers = 2\n    return c\n"
    )
    workdir, log = tmp_path / "run", tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fgjax.cli.train", f"--config={recipe}", f"--workdir={workdir}"],
            env=_env(),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        metrics, deadline = workdir / "metrics.jsonl", time.time() + 300
        while not (metrics.is_file() and metrics.stat().st_size):  # a first step is logged
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.05)
        children = _descendants(proc.pid)  # recorded now: after the kill they move to init
        commands = [_cmdline(pid) for pid in children]
    finally:
        proc.kill()
        proc.wait()
    assert sum("spawn_main" in c for c in commands) == 2, commands  # the grain workers
    assert sum("resource_tracker" in c for c in commands) == 1, commands
    assert not _wait_until_ended(children)


def test_a_finished_run_with_workers_leaves_no_shared_memory_behind(tmp_path):
    """grain's workers hand batches over in shared memory, unlinked by a daemon thread of
    the trainer: a run that ends normally waits for it (no resource-tracker warning of
    "leaked shared_memory objects", which also lists what it had to unlink)."""
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom conftest import tiny_config\n\n"
        "def get_config():\n    c = tiny_config('supervised')\n    c.train.num_epochs = 1\n"
        "    c.eval.at_start = False\n    c.data.num_workers = 2\n    return c\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fgjax.cli.train",
            f"--config={recipe}",
            f"--workdir={tmp_path / 'r'}",
        ],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "trained:" in proc.stdout  # the evaluation ran too (its loader has workers)
    assert "shared_memory" not in proc.stderr, proc.stderr


def test_a_worker_whose_parent_died_before_it_watched_ends_at_once(tmp_path):
    """`exit_with_parent` in a (forked) process whose parent is already dead ends it."""
    script = textwrap.dedent(
        """
        import multiprocessing, os, time
        from fgjax.data.grain_utils import exit_with_parent

        def child(parent_pid):
            while os.getppid() == parent_pid:  # until the parent is dead
                time.sleep(0.01)
            exit_with_parent()
            time.sleep(60)

        if __name__ == "__main__":
            p = multiprocessing.get_context("fork").Process(target=child, args=(os.getpid(),))
            p.start()
            print(p.pid, flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=_env(), cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(proc.stdout.readline())
        start = _stat(child)[2]
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert not _wait_until_ended({child: start})


def _settled_descriptor_count() -> int:
    """This process's open descriptors once the count holds still for 0.5 s (pipes of the
    ended workers close in grain's threads a moment later), at most GRACE_S."""
    count = lambda: len(os.listdir(f"/proc/{os.getpid()}/fd"))
    deadline, last, steady = time.time() + GRACE_S, count(), 0
    while steady < 5 and time.time() < deadline:
        time.sleep(0.1)
        now = count()
        steady, last = (steady + 1 if now == last else 0), now
    return last


def test_evaluation_passes_leave_no_worker_or_descriptor_behind():
    """Each pass of a 2-worker eval loader starts its workers and ends them at its end;
    the batches equal the in-process loader's and no file descriptor accumulates."""
    source = ProceduralFineGrained(
        "test", num_coarse=2, fine_per_coarse=2, images_per_class=6, image_size=16
    )
    kwargs = dict(batch_size=4, image_size=8)
    expected = list(make_eval_loader(source, num_workers=0, **kwargs))
    loader = make_eval_loader(source, num_workers=2, **kwargs)
    before = _descendants(os.getpid())
    descriptors = []
    for _ in range(3):
        workers = {}  # started during the pass; not the resource tracker, which stays
        for batch, want in zip(loader, expected, strict=True):
            np.testing.assert_array_equal(batch["images"], want["images"])
            np.testing.assert_array_equal(batch["index"], want["index"])
            for pid, start in _descendants(os.getpid()).items():
                if pid not in before and "spawn_main" in _cmdline(pid):
                    workers[pid] = start
        assert len(workers) == 2
        assert not _wait_until_ended(workers)
        descriptors.append(_settled_descriptor_count())
    # No growth from pass to pass once warm: the first pass after another test in this
    # process (the SIGKILL one) may leave descriptors that then stay; a leak grows each pass.
    assert descriptors[2] <= descriptors[1], descriptors
