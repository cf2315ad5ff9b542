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
    """Appends to metrics.jsonl; only process 0 writes. After a resume, steps between
    the checkpoint and the kill appear twice; readers merge the records of a step, the
    last one winning (an epoch hook's record and a step's record may share a step)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = jax.process_index() == 0

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _number(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


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
