"""Progress reporting that suits where the output goes.

On a terminal: a tqdm bar. Anywhere else (a log file, CI, `nohup`): one plain line
every `every` updates and at the end, instead of thousands of carriage-return updates.
Only process 0 reports.
"""

from __future__ import annotations

import sys
import time

import jax
from tqdm import tqdm


class LineProgress:
    """The tqdm subset the loops use (`update`, `set_postfix`, `close`), as plain lines."""

    def __init__(self, total: int, initial: int, desc: str, every: int):
        self.total, self.n, self.desc, self.every = total, initial, desc, max(1, every)
        self.start_n, self.start = initial, time.perf_counter()
        self.postfix: dict[str, str] = {}

    def update(self, count: int = 1) -> None:
        self.n += count
        if self.n % self.every == 0 and self.n < self.total:
            self._print()

    def set_postfix(self, **values) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}

    def _print(self) -> None:
        elapsed = time.perf_counter() - self.start
        done = self.n - self.start_n
        eta = elapsed / done * (self.total - self.n) if done else 0.0
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        print(
            f"{self.desc} {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%)"
            f"{extra} elapsed={elapsed:.0f}s eta={eta:.0f}s",
            flush=True,
        )

    def close(self) -> None:
        if self.n > self.start_n:
            self._print()
        self.start_n = self.n  # print once


class _Silent:
    def update(self, count: int = 1) -> None: ...

    def set_postfix(self, **values) -> None: ...

    def close(self) -> None: ...


def progress(total: int, *, initial: int = 0, desc: str, enabled: bool = True, every: int = 10):
    """A live bar on a terminal, plain lines every `every` updates elsewhere, or nothing
    (`enabled=False`, or processes other than 0)."""
    if not enabled or jax.process_index() != 0:
        return _Silent()
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True)
    return LineProgress(total, initial, desc, every)
