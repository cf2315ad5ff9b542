"""Metrics to `WORKDIR/metrics.jsonl` (one JSON object per logged step) and throughput."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax


def _number(value: Any) -> float | list:
    """A JSON number, or a list of them (e.g. one per coarse class)."""
    if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0:
        return [float(v) for v in value]
    return float(value)


class MetricsWriter:
    """Appends to metrics.jsonl; only process 0 writes. A step's record and an epoch
    hook's record may share a step (readers merge them). After a resume, `rewind` cuts
    the file back to its length at the restored checkpoint, so each step appears once."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = jax.process_index() == 0

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _number(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def size(self) -> int:
        """The file's length in bytes (0 before the first record)."""
        return os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def rewind(self, size: int) -> None:
        """Drop what was logged after the file was `size` bytes long (the records written
        after the checkpoint a resume starts from: the run logs them again)."""
        if self.enabled and self.size() > size:
            with open(self.path, "r+b") as f:
                f.truncate(size)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """Records sorted by step; the records of one step merged, later values winning."""
    by_step: dict[int, dict[str, Any]] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_step.setdefault(int(record["step"]), {}).update(record)
    return [by_step[s] for s in sorted(by_step)]


class Throughput:
    """Images per second between successive `measure` calls."""

    def __init__(self, images_per_step: int):
        self.images_per_step = images_per_step
        self.last_time = time.perf_counter()
        self.last_step: int | None = None

    def measure(self, step: int) -> float:
        now = time.perf_counter()
        rate = 0.0
        if self.last_step is not None and step > self.last_step:
            rate = (step - self.last_step) * self.images_per_step / (now - self.last_time)
        self.last_time, self.last_step = now, step
        return rate
