"""One `data` mesh axis over every device of every process.

The global batch is split along `data`; the train state is replicated. The same
code runs on one CPU, eight GPUs or a multi-host TPU slice (after
`jax.distributed.initialize()`), where each process feeds its own share.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble per-process numpy batches into global arrays sharded along `data`."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def check_batch_divisible(global_batch_size: int, field: str = "config.train.batch_size") -> None:
    devices, processes = jax.device_count(), jax.process_count()
    if global_batch_size % devices or global_batch_size % processes:
        raise ValueError(
            f"{field}={global_batch_size} must be divisible by the {devices} devices "
            f"and {processes} processes"
        )


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))


def local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a `data`-sharded global array, in global order (the rows
    it fed with `global_batch`); the whole array on a single process."""
    if jax.process_count() == 1:
        return np.asarray(array)
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    rows, seen = [], set()
    for shard in shards:
        start = shard.index[0].start or 0
        if start not in seen:  # replicas of one row block on several local devices
            seen.add(start)
            rows.append(np.asarray(shard.data))
    return np.concatenate(rows)
