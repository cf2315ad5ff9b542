"""Find the images of a source that training would fail on, before training.

`find_bad_images` decodes every record with the evaluation decoder
(`decode.resize_center_crop`: open, draft, full decode, RGB conversion, the record's box
or banner trim), the same code the loaders run, so a file it passes is one the
pipeline reads.
"""

from __future__ import annotations

import multiprocessing
from typing import NamedTuple

import numpy as np

from fgjax.data.decode import resize_center_crop
from fgjax.data.grain_utils import exit_with_parent


class BadImage(NamedTuple):
    """One record that did not decode: its index in the source, its file, and why."""

    index: int
    path: str
    reason: str


_SOURCE = None  # the source, set once per worker process by `_init_worker`


def _init_worker(source) -> None:
    global _SOURCE
    _SOURCE = source
    exit_with_parent()  # a killed `inspect --verify` leaves no pool workers behind


def _check(source, indices: np.ndarray, image_size: int) -> list[BadImage]:
    bad = []
    for i in indices.tolist():
        record = source[i]
        try:
            resize_center_crop(record, image_size=image_size)
        except Exception as e:  # noqa: BLE001 - any failure is a bad image to report
            path = record.get("path", f"<in-memory record {i}>")
            bad.append(BadImage(i, path, f"{type(e).__name__}: {e}"))
    return bad


def _check_chunk(args: tuple[np.ndarray, int]) -> tuple[int, list[BadImage]]:
    indices, image_size = args
    return len(indices), _check(_SOURCE, indices, image_size)


def find_bad_images(
    source,
    num_workers: int = 0,
    show_progress: bool = True,
    *,
    image_size: int = 224,
    chunk_size: int = 64,
) -> list[BadImage]:
    """Every record of `source` that does not decode, sorted by index.

    Args:
      source: any source (`__len__`, `__getitem__` -> record with 'path' or 'image').
      num_workers: processes decoding in parallel (0: in this process). Workers are
        spawned (not forked: the parent may have started JAX's threads) and receive the
        source once.
      show_progress: a progress bar over the records.
      image_size: the evaluation crop side the decode is run at (`config.data.image_size`).
      chunk_size: records per task handed to a worker.
    """
    from fgjax.core.progress import progress

    chunks = np.array_split(np.arange(len(source)), max(1, -(-len(source) // chunk_size)))
    bar = progress(len(source), desc="verify", enabled=show_progress)
    bad: list[BadImage] = []
    try:
        if num_workers <= 0:
            for chunk in chunks:
                bad.extend(_check(source, chunk, image_size))
                bar.set_postfix(bad=len(bad))
                bar.update(len(chunk))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(num_workers, initializer=_init_worker, initargs=(source,)) as pool:
                tasks = [(chunk, image_size) for chunk in chunks]
                for count, found in pool.imap_unordered(_check_chunk, tasks):
                    bad.extend(found)
                    bar.set_postfix(bad=len(bad))
                    bar.update(count)
    finally:
        bar.close()
    return sorted(bad)
