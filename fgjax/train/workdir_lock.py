"""One trainer per workdir: an exclusive `fcntl.flock` on `<workdir>/trainer.lock`.

Two trainers in one workdir break each other (the second sets aside the first's in-flight
checkpoint as a leftover, both append to `metrics.jsonl`). The lock file holds the holder's
host and PID for the refusal message. The kernel drops a flock when its process ends, even
by SIGKILL, so a lock whose process is gone is taken over without any staleness check.
Readers (`fgjax eval`, the picture commands) never take it. flock is per host:
on a network file system that does not pass it on, two hosts are not kept apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator

LOCK_NAME = "trainer.lock"


class WorkdirInUseError(OSError):
    """Another live trainer holds the workdir's lock."""


@contextlib.contextmanager
def hold_workdir(workdir: str) -> Iterator[None]:
    """Hold `workdir`'s trainer lock for the body; `WorkdirInUseError` names the holder."""
    path = os.path.join(workdir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 512).decode(errors="replace").strip() or "unknown process"
        os.close(fd)
        raise WorkdirInUseError(
            f"{workdir} is in use by another trainer ({holder}; lock file {path}): wait for "
            "it to end or stop it (rerunning then resumes its run), or pass another --workdir"
        ) from None
    try:
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {since}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, naming the last holder
