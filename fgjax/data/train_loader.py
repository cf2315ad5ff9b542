"""grain training loader: shuffled drop-last epochs of RandomResizedCrop + flip views,
one per `ViewSpec` (each with its own size, crop parameters and image root).

Every epoch is a fresh permutation of the source (seeded by (seed, epoch)) cut into
`steps_per_epoch` global batches; the remainder of each epoch is dropped (PyTorch
`drop_last=True` per epoch, so epochs line up with `steps_per_epoch`), or with
`keep_last` is the epoch's last, smaller batch (`drop_last=False`). With the 'pk' sampler
an epoch is instead `steps_per_epoch` P x K class-balanced batches (`pk_sampler.pk_order`,
a fresh pass at each epoch's start, seeded by (seed, epoch)). Process p of P takes
the rows [p b, (p + 1) b) of every global batch (b = its size / P). Each
element of the grain pipeline is one whole per-process batch, so a batch's content does
not depend on `num_workers`, and every random crop/flip is drawn from a generator seeded
by (seed, position in the global stream), which draws, per view in order, the crop box
then the flip: the output is bitwise reproducible for any `num_workers`, and the
concatenation of all processes' batches equals the single-process batch.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Sequence

import grain.python as grain
import numpy as np

from fgjax.data.decode import ImageDecodeError, parallel_path, random_crop_views, view_owner
from fgjax.data.grain_utils import (
    ExitWithParent,
    IndexSampler,
    check_process,
    int32_field,
    prepare_workers,
    stable_repr,
)
from fgjax.data.pk_sampler import pk_order
from fgjax.data.views import ViewSpec

_TAG_SHUFFLE, _TAG_CROP = 0, 1


def steps_per_epoch(num_examples: int, global_batch_size: int, keep_last: bool = False) -> int:
    """Training steps per epoch: drop-last (CUB 5994 @ 128 -> 46) or, with `keep_last`,
    counting the epoch's last partial batch (-> 47)."""
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    if keep_last:
        return -(-num_examples // global_batch_size)
    return num_examples // global_batch_size


def last_batch_size(num_examples: int, global_batch_size: int, keep_last: bool = False) -> int:
    """Size of each epoch's last batch: `global_batch_size`, or with `keep_last` the
    remainder when there is one (CUB 5994 @ 32 -> 10)."""
    remainder = num_examples % global_batch_size
    return remainder if keep_last and remainder else global_batch_size


class _TrainBatches:
    """Random-access 'source' of per-process training batches (raw records + positions)."""

    def __init__(
        self,
        source,
        *,
        seed,
        global_batch_size,
        process_index,
        process_count,
        num_batches,
        keep_last,
        pk,
    ):
        self._source = source
        self._n = len(source)
        self._seed = seed
        self._global = global_batch_size
        self._process_index = process_index
        self._process_count = process_count
        self._steps = steps_per_epoch(self._n, global_batch_size, keep_last)
        self._keep_last = keep_last
        self._num_batches = num_batches
        self._pk = pk  # None (shuffle) or (P, K)
        self._labels = None if pk is None else np.asarray(source.labels)
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return sys.maxsize if self._num_batches is None else self._num_batches

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            rng = np.random.default_rng([self._seed, _TAG_SHUFFLE, epoch])
            if self._pk is None:
                order = rng.permutation(self._n)
            else:
                order = pk_order(self._labels, *self._pk, rng, self._steps)
            self._perm_cache = (epoch, order)
        return self._perm_cache[1]

    def __getitem__(self, t: int) -> dict:
        epoch, j = divmod(int(t), self._steps)
        size = self._global
        if j == self._steps - 1:
            size = last_batch_size(self._n, self._global, self._keep_last)
        local = size // self._process_count
        offset = self._process_index * local
        keys = self.permutation(epoch)[j * self._global + offset :][:local]
        first = int(t) * self._global + offset
        return {
            "records": [self._source[int(k)] for k in keys],
            "positions": np.arange(first, first + local, dtype=np.int64),
        }

    def __repr__(self) -> str:
        # grain checks this on set_state; named only for 'pk', so that the checkpoints of
        # earlier 'shuffle' runs still resume.
        pk = "" if self._pk is None else f", pk={self._pk}"
        return (
            f"_TrainBatches(source={stable_repr(self._source)}, seed={self._seed}, "
            f"global_batch_size={self._global}, process={self._process_index}/"
            f"{self._process_count}, num_batches={self._num_batches}, "
            f"keep_last={self._keep_last}{pk})"
        )


# With skip_bad, an undecodable record is replaced by the next decodable one after it
# (index + 1, + 2, ...; at most this many tries), so a rerun draws the same replacement.
_MAX_REPLACEMENT_TRIES = 16


class _TrainTransform(grain.MapTransform):
    """Decodes a batch of records into views; rng per example from (seed, position).

    `skip_source`: None fails on the first undecodable image; otherwise the source the
    replacements are read from (skip_bad), listed in the batch's 'bad_images'.
    """

    def __init__(
        self, *, seed: int, views: tuple[ViewSpec, ...], source_root: str | None, skip_source
    ):
        self._seed = seed
        self._views = views
        self._source_root = source_root
        self._skip_source = skip_source

    def _crops(self, record: dict, pos: int, bad: list[str]) -> tuple[dict, dict]:
        """(views, record used): `record`'s views, or with skip_bad a replacement's."""
        for _ in range(_MAX_REPLACEMENT_TRIES + 1):
            rng = np.random.default_rng([self._seed, _TAG_CROP, int(pos)])
            try:
                return random_crop_views(
                    record, rng, self._views, source_root=self._source_root
                ), record
            except ImageDecodeError as e:
                if self._skip_source is None:
                    raise ImageDecodeError(
                        f"{e} (training record {record['index']}; config.data.skip_bad=True "
                        "replaces undecodable images, `fgjax inspect --verify` "
                        "lists them all)"
                    ) from e
                bad.append(str(e))
                n = len(self._skip_source)
                record = self._skip_source[(record["index"] + 1) % n]
        raise ImageDecodeError(
            f"{_MAX_REPLACEMENT_TRIES + 1} consecutive undecodable images, the last: {bad[-1]}"
        )

    def map(self, element: dict) -> dict:
        records, positions = element["records"], element["positions"]
        views = {v.name: np.empty((len(records), v.size, v.size, 3), np.uint8) for v in self._views}
        used, bad = [], []
        for i, (record, pos) in enumerate(zip(records, positions, strict=True)):
            crops, record = self._crops(record, pos, bad)
            used.append(record)
            for name, crop in crops.items():
                views[name][i] = crop
        return {
            "views": views,
            "label": int32_field(used, "label"),
            "coarse_label": int32_field(used, "coarse_label"),
            "index": int32_field(used, "index"),
            "bad_images": bad,
        }


def _check_views(views: Sequence[ViewSpec], source) -> tuple[ViewSpec, ...]:
    views = tuple(views)
    if not views:
        raise ValueError("views must hold at least one ViewSpec")
    for view in views:
        if not isinstance(view, ViewSpec):
            raise TypeError(f"views must be ViewSpec instances, got {view!r}")
    names = [v.name for v in views]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"view names must be unique; repeated: {repeated}")
    for view in views:
        if view.root:  # fail here, not in a worker: the first record must map to the root
            parallel_path(source[0], view.root, getattr(source, "root", None), view_owner(view))
    return views


def _check_pk(
    sampler: str, p: int, k: int, global_batch_size: int, keep_last: bool, source
) -> tuple[int, int] | None:
    """(P, K) for sampler 'pk', None for 'shuffle'; errors name the config fields."""
    if sampler == "shuffle":
        return None
    if sampler != "pk":
        raise ValueError(f"config.data.sampler must be 'shuffle' or 'pk', got {sampler!r}")
    if p < 1 or k < 1 or p * k != global_batch_size:
        raise ValueError(
            f"config.data.sampler='pk': config.data.pk_classes={p} x config.data.pk_images="
            f"{k} must equal config.train.batch_size={global_batch_size} (both >= 1)"
        )
    if keep_last:
        raise ValueError(
            "config.data.sampler='pk' makes only full P x K batches: set "
            "config.train.keep_last_batch=False"
        )
    if not hasattr(source, "labels"):
        raise ValueError(f"config.data.sampler='pk' needs a source with `labels`: {source!r}")
    num_classes = len(np.unique(source.labels))
    if num_classes < p:
        raise ValueError(
            f"config.data.pk_classes={p} exceeds the {num_classes} classes of the training split"
        )
    return p, k


def make_train_loader(
    source,
    *,
    global_batch_size: int,
    views: Sequence[ViewSpec],
    seed: int,
    num_workers: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    worker_buffer_size: int = 2,
    skip_bad: bool = False,
    keep_last: bool = False,
    sampler: str = "shuffle",
    pk_classes: int = 0,
    pk_images: int = 0,
) -> grain.DataLoader:
    """Training loader over `source` (see the module docstring for the semantics).

    Yields dicts for THIS process (b = global_batch_size // process_count):
      'views': {view.name: uint8 [b, view.size, view.size, 3]} for every ViewSpec
        (RandomResizedCrop + flip(p=0.5), independent per view),
      'label', 'coarse_label', 'index': int32 [b],
      'bad_images': list of str, one error message per undecodable image replaced in
        this batch (always empty without `skip_bad`).
    With `keep_last`, each epoch's last batch holds the remainder of the epoch (its size
    must then be divisible by `process_count`).
    An undecodable image raises ImageDecodeError naming the file; with `skip_bad` it is
    replaced by the next decodable record of the source (same crops draws), reported in
    'bad_images'.
    `sampler` 'pk' orders the batches P x K (`pk_classes` classes x `pk_images` images,
    their product `global_batch_size`; see fgjax.data.pk_sampler) by the source's
    `labels`, still `steps_per_epoch` batches an epoch (`keep_last` not allowed).
    A view with a `root` needs a source with a `root` attribute and records with
    'path' (ImageFolderSource, CsvManifestSource). `num_epochs=None` repeats forever.
    `iter(loader)` supports get_state()/set_state().
    """
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count}"
        )
    check_process(process_index, process_count)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    steps = steps_per_epoch(len(source), global_batch_size, keep_last)
    last = last_batch_size(len(source), global_batch_size, keep_last)
    if last % process_count:
        raise ValueError(
            f"keep_last: the last batch of each epoch holds {last} of the {len(source)} "
            f"records, not divisible by process_count={process_count}"
        )
    if steps == 0:
        raise ValueError(
            f"the source has {len(source)} records, fewer than global_batch_size="
            f"{global_batch_size}: no full batch (batches drop the remainder)"
        )
    pk = _check_pk(sampler, pk_classes, pk_images, global_batch_size, keep_last, source)
    views = _check_views(views, source)
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    num_batches = None if num_epochs is None else num_epochs * steps
    plan = _TrainBatches(
        source,
        seed=seed,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
        num_batches=num_batches,
        keep_last=keep_last,
        pk=pk,
    )
    transform = _TrainTransform(
        seed=seed,
        views=views,
        source_root=getattr(source, "root", None),
        skip_source=source if skip_bad else None,
    )
    prepare_workers(num_workers)
    return grain.DataLoader(
        data_source=plan,
        sampler=IndexSampler(num_batches),
        operations=[ExitWithParent(), transform],  # workers end with their parent
        worker_count=num_workers,
        worker_buffer_size=worker_buffer_size,
        shard_options=grain.NoSharding(),
    )
