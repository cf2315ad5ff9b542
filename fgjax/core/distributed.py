"""Several processes (hosts) training one model: start-up and the little they exchange.

`initialize` joins this process to the others (`jax.distributed.initialize`). Each
process then feeds its own rows of every global batch (fgjax.data.train_loader), the
train state is replicated over all devices (fgjax.core.sharding), checkpoints are
written together (orbax: every process calls save/restore on a folder all of them see)
and only process 0 writes logs and result files.
"""

from __future__ import annotations

import os

import jax
import numpy as np

# What jax.distributed.initialize reads itself is JAX_COORDINATOR_ADDRESS; these two are
# read here so that a plain `--multihost` run can be configured entirely by environment.
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(name: str, flag: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={value!r} (or --{flag}) must be an integer"
        ) from None


def _cpu_only() -> bool:
    """Whether the run is restricted to the CPU (JAX_PLATFORMS / jax_platforms = 'cpu'),
    read without starting a backend (that must wait for `initialize`)."""
    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    return platforms.split(",")[0].strip().lower() == "cpu"


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join the other processes of a multi-host run; call before anything touches jax's
    devices.

    Unset arguments come from JAX_COORDINATOR_ADDRESS (HOST:PORT of process 0),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID; whatever is still unset jax detects itself on a
    Cloud TPU VM slice, under SLURM (`srun`), Open MPI or Kubernetes. On the CPU the
    cross-process collectives are gloo's (over TCP).
    """
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES, "num_processes")
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID, "process_id")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process_id={process_id} must be in [0, --num_processes={num_processes})"
        )
    if _cpu_only():  # set before the CPU client exists, which initialize() creates
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator or None, num_processes, process_id)
    except ValueError as err:  # nothing given and no cluster detected
        raise ValueError(
            f"--multihost: {err} Not a detected Cloud TPU / SLURM / MPI environment: give "
            "--coordinator=HOST:PORT --num_processes=N --process_id=I (or "
            f"JAX_COORDINATOR_ADDRESS, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})"
        ) from err


def all_processes(text: str) -> list[str]:
    """Every process's `text`, in process order (a collective: all processes call it at
    the same point). On one process, `[text]`."""
    if jax.process_count() == 1:
        return [text]
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(data))))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: len(data)] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [bytes(row[:n]).decode() for row, n in zip(rows, lengths, strict=True)]


def say(*values: object) -> None:
    """`print` on process 0 only: one copy of each message of a run however many
    processes train it (the library's reports; `fgjax train` also silences the
    other processes' stdout as a whole)."""
    if jax.process_index() == 0:
        print(*values, flush=True)
