"""`python -m fgjax.cli.train ARGS...` that also records which training examples it consumed.

    python multihost_train.py RECORD_PREFIX [HALT_AT] -- FGJAX_MAIN_ARGS...

Used by tests/test_multihost_train.py. Each process appends the example indices of every
batch the training loop takes to `RECORD_PREFIX.<process index>.jsonl` (one JSON list a
line; a `"start"` line at each launch), which shows which shard each process read. With
HALT_AT (a step, or `-` for none) the processes stop once the checkpoint of that step is
on disk and wait to be killed, so that a test can SIGKILL them all at a known step.
"""

import json
import os
import sys
import time

import jax

from fgjax.cli import train as main
from fgjax.train import loop


class _Recording:
    """The loader's iterator, logging each batch's example indices."""

    def __init__(self, iterator, path: str):
        self._iterator, self._path = iterator, path
        self._log("start")

    def _log(self, entry) -> None:
        with open(self._path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._iterator)
        self._log(batch["index"].tolist())
        return batch

    def get_state(self) -> bytes:
        return self._iterator.get_state()

    def set_state(self, state: bytes) -> None:
        self._iterator.set_state(state)


class _Loader:
    def __init__(self, loader, prefix: str):
        self._loader, self._prefix = loader, prefix

    def __iter__(self):
        return _Recording(iter(self._loader), f"{self._prefix}.{jax.process_index()}.jsonl")


def _recording_loader(prefix: str):
    make = loop.make_train_loader
    return lambda *args, **kwargs: _Loader(make(*args, **kwargs), prefix)


def _halting_checkpointer(halt_at: int):
    class Halting(loop.Checkpointer):
        def save(self, step, *args, **kwargs):
            super().save(step, *args, **kwargs)
            if step == halt_at:
                self.wait()  # the checkpoint complete on disk, then wait to be killed
                print(f"halted at step {step}", flush=True)
                while True:
                    time.sleep(1)

    return Halting


if __name__ == "__main__":
    split = sys.argv.index("--")
    prefix, *halt = sys.argv[1:split]
    loop.make_train_loader = _recording_loader(os.path.abspath(prefix))
    if halt and halt[0] != "-":
        loop.Checkpointer = _halting_checkpointer(int(halt[0]))
    main.run([sys.argv[0], *sys.argv[split + 1 :]])
