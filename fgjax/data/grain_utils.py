"""Pieces shared by the grain train and eval loaders."""

from __future__ import annotations

import atexit
import contextlib
import gc
import multiprocessing
import multiprocessing.spawn
import os
import sys
import threading
from collections.abc import Iterator

import grain.python as grain
import numpy as np


def check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")


_release_registered = False


def prepare_workers(num_workers: int | None) -> None:
    """What a grain loader with workers (`num_workers` != 0; None: grain picks) needs
    before it starts them.

    - grain 0.2.18 reads an absl flag when starting workers once JAX is imported, which
      fails in programs that never parse absl flags (google/grain#1355, fixed upstream in
      #1362): mark the flags as parsed (keeping their defaults) if nobody has.
    - The workers hand batches over in shared memory; the loading process unlinks each
      segment when its array is freed, in grain's background thread. That thread is a
      daemon: segments still queued when the process exits stay linked, and Python's
      resource tracker warns "There appear to be N leaked shared_memory objects". So the
      process waits for that queue at exit (`_finish_shared_memory`, registered once).
    """
    global _release_registered
    if num_workers == 0:
        return
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    if not _release_registered:
        # Registered after multiprocessing's own exit handler (imported above), so it runs
        # before it (last in, first out), while grain's thread still runs.
        atexit.register(_finish_shared_memory)
        _release_registered = True


def _finish_shared_memory() -> None:
    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

    gc.collect()  # arrays in reference cycles queue their deletion now
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)  # private: read defensively
    if pool is not None:
        try:
            pool.apply(lambda: None, ())  # one thread, first in first out: the queue is done
        except ValueError:  # the pool was stopped already
            pass


def stable_repr(source) -> str:
    """repr(source), or a run-independent one for default object reprs (grain checks it)."""
    r = repr(source)
    if " at 0x" in r:
        r = f"{type(source).__qualname__}(num_records={len(source)})"
    return r


def int32_field(records: list[dict], key: str) -> np.ndarray:
    """int32 [len(records)] of `record[key]` (-1 where absent)."""
    return np.array([r.get(key, -1) for r in records], np.int32)


class IndexSampler:
    """Element t of the pipeline is (per-process) batch t; `num_batches=None` = infinite."""

    def __init__(self, num_batches: int | None):
        self._num_batches = num_batches

    def __len__(self) -> int:
        return sys.maxsize if self._num_batches is None else self._num_batches

    def __getitem__(self, t: int) -> grain.RecordMetadata:
        if t < 0 or (self._num_batches is not None and t >= self._num_batches):
            raise IndexError(f"batch {t} out of range [0, {self._num_batches})")
        return grain.RecordMetadata(index=t, record_key=t)

    def __repr__(self) -> str:
        return f"IndexSampler(num_batches={self._num_batches})"


_watch_lock = threading.Lock()
_watching_in: int | None = None  # pid of the process whose parent is watched


@contextlib.contextmanager
def workers_ignore_sigint() -> Iterator[None]:
    """Processes spawned in the body (grain's data workers) ignore SIGINT from their first
    statement. A terminal's Ctrl-C is SIGINT to its whole process group: the workers would
    die with a traceback each, mid-import or mid-queue, and leave the trainer (which saves
    and stops) waiting on them. Neither a blocked signal mask nor the handler set around the
    start survives (spawn re-executes Python, and grain starts workers lazily from its
    prefetch threads), so the spawn command line itself ignores SIGINT first."""
    original = multiprocessing.spawn.get_command_line

    def command_line(**kwargs) -> list[str]:
        line = original(**kwargs)
        if "-c" in line:  # not a frozen executable
            at = line.index("-c") + 1
            line[at] = f"import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); {line[at]}"
        return line

    multiprocessing.spawn.get_command_line = command_line
    try:
        yield
    finally:
        multiprocessing.spawn.get_command_line = original


def exit_with_parent() -> None:
    """Ends this process as soon as its parent process ends, however it ends (SIGKILL
    included), if it was started by multiprocessing (no-op otherwise); idempotent.

    A daemon thread waits on `multiprocessing.parent_process().sentinel`, a pipe end whose
    other end only the parent holds: it reads EOF when the parent process is gone, also
    when that happened before this call. Not prctl(PR_SET_PDEATHSIG): that fires when the
    parent *thread* that started the child exits, and grain starts its workers from
    short-lived prefetch threads.
    """
    global _watching_in
    with _watch_lock:
        if _watching_in == os.getpid():  # a forked child inherits the flag, not the thread
            return
        parent = multiprocessing.parent_process()
        if parent is None:
            return
        _watching_in = os.getpid()
    threading.Thread(
        target=_exit_after, args=(parent,), name="fgjax-exit-with-parent", daemon=True
    ).start()


def _exit_after(parent) -> None:
    parent.join()  # waits on the sentinel
    os._exit(1)


class ExitWithParent(grain.MapTransform):
    """Identity transform, first of a loader's operations: in a grain worker (any process
    but the one that built the loader) it calls `exit_with_parent()`, so the worker does not
    outlive a killed trainer. Per element, as grain 0.2's DataLoader takes no worker init
    hook; it costs a pid comparison."""

    def __init__(self):
        self._owner = os.getpid()

    def map(self, element):
        if os.getpid() != self._owner:
            exit_with_parent()
        return element
