"""Pieces shared by the grain train and eval loaders."""

from __future__ import annotations

import sys

import grain.python as grain
import numpy as np


def check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")


def absl_flags_workaround(num_workers: int | None) -> None:
    """grain 0.2.18 reads an absl flag when starting workers once JAX is imported, which
    fails in programs that never parse absl flags (google/grain#1355, fixed upstream in
    #1362): mark the flags as parsed (keeping their defaults) if nobody has."""
    if num_workers != 0:  # None: grain picks a worker count
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()


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
