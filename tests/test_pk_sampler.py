"""P x K class-balanced batches: the order's structure (checked by replaying the pass
bookkeeping from the output alone) and the training loader's use of it."""

import numpy as np
import pytest

from fgjax.data.pk_sampler import pk_order
from fgjax.data.procedural import ProceduralFineGrained
from fgjax.data.train_loader import _TAG_SHUFFLE, make_train_loader
from fgjax.data.views import ViewSpec


def _batches(labels, p, k, seed, num_batches):
    order = pk_order(labels, p, k, np.random.default_rng(seed), num_batches)
    assert order.dtype == np.int64 and order.shape == (num_batches * p * k,)
    return order.reshape(num_batches, p, k)


def _replay_passes(labels, batches, k):
    """Checks every batch against the pass rules and returns the passes, each a list of
    its batches [P, K]. A class has len // K chunks a pass (1 when it has fewer than K
    images); a pass ends when fewer than P classes have chunks left."""
    counts = np.bincount(labels)
    chunks = np.maximum(counts // k, 1)
    p = batches.shape[1]
    passes, left = [], None
    for batch in batches:
        if left is None or (left > 0).sum() < p:
            left, seen = chunks.copy(), set()
            passes.append([])
        classes = labels[batch]  # [P, K]
        assert (classes == classes[:, :1]).all(), "a chunk mixes classes"
        assert len(set(classes[:, 0])) == p, "the P classes of a batch are not distinct"
        for c, chunk in zip(classes[:, 0], batch, strict=True):
            assert left[c] > 0, f"class {c} drawn after it was exhausted in this pass"
            left[c] -= 1
            if counts[c] >= k:  # distinct images, none seen before in this pass
                assert len(set(chunk)) == k and not seen & set(chunk)
            seen |= set(chunk)
        passes[-1].append(batch)
    return passes


def test_pk_batches_follow_the_pass_rules_and_fill_small_classes():
    # Classes 0-5 hold 10 images (2 chunks of K=5), class 6 holds 7 (one chunk, two images
    # left out each pass), class 7 holds 3 (filled to 5 with replacement); shuffled labels.
    labels = np.repeat(np.arange(8), [10] * 6 + [7, 3])
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    batches = _batches(labels, 3, 5, seed=1, num_batches=40)
    passes = _replay_passes(labels, batches, 5)
    # 14 chunks, 3 per batch: a pass ends after 4 batches, 2 classes' chunks unused.
    assert [len(batches_of_pass) for batches_of_pass in passes] == [4] * 10
    small = np.flatnonzero(labels == 7)
    for batch in batches:
        for chunk in batch[labels[batch[:, 0]] == 7]:
            assert set(chunk) == set(small), "a filled class shows all its images"
    assert not np.array_equal(batches, _batches(labels, 3, 5, seed=2, num_batches=40))
    np.testing.assert_array_equal(batches, _batches(labels, 3, 5, seed=1, num_batches=40))


def test_pk_order_covers_every_image_once_a_pass_when_counts_divide():
    labels = np.repeat(np.arange(4), 10)  # P = all 4 classes: each pass is 2 whole batches
    batches = _batches(labels, 4, 5, seed=0, num_batches=6)
    _replay_passes(labels, batches, 5)
    for start in (0, 2, 4):
        np.testing.assert_array_equal(np.sort(batches[start : start + 2].reshape(-1)), range(40))
    # K = 1 (CosFace / ArcFace): P distinct classes, every image once a pass (5 batches).
    labels = np.repeat(np.arange(6), 5)
    batches = _batches(labels, 6, 1, seed=0, num_batches=10)
    _replay_passes(labels, batches, 1)
    np.testing.assert_array_equal(np.sort(batches[:5].reshape(-1)), range(30))
    with pytest.raises(ValueError, match="only 6 classes"):
        pk_order(labels, 7, 1, np.random.default_rng(0), 1)


def test_pk_train_loader_is_class_balanced_deterministic_and_sharded():
    src = ProceduralFineGrained(
        "all", num_coarse=2, fine_per_coarse=3, images_per_class=5, image_size=16
    )  # 6 classes x 5 images, 30 images: 3 steps of 2 x 4 an epoch
    kw = dict(
        global_batch_size=8,
        views=[ViewSpec("a", 8)],
        seed=3,
        sampler="pk",
        pk_classes=2,
        pk_images=4,
        num_epochs=2,
    )
    batches = list(make_train_loader(src, num_workers=0, **kw))
    assert len(batches) == 6
    for t, batch in enumerate(batches):
        epoch, j = divmod(t, 3)  # the loader's rows are its epoch's pk_order, in order
        rng = np.random.default_rng([3, _TAG_SHUFFLE, epoch])
        expected = pk_order(src.labels, 2, 4, rng, 3)
        np.testing.assert_array_equal(batch["index"], expected[8 * j : 8 * (j + 1)])
        blocks = batch["label"].reshape(2, 4)
        assert (blocks == blocks[:, :1]).all() and blocks[0, 0] != blocks[1, 0]
    # Bit-identical with 2 workers; two processes' shares concatenate to the global batch.
    workers = list(make_train_loader(src, num_workers=2, **kw))
    halves = [
        list(make_train_loader(src, num_workers=0, process_index=i, process_count=2, **kw))
        for i in range(2)
    ]
    for whole, other, a, b in zip(batches, workers, *halves, strict=True):
        for key in ("index", "label"):
            np.testing.assert_array_equal(whole[key], other[key])
            np.testing.assert_array_equal(whole[key], np.concatenate([a[key], b[key]]))
        np.testing.assert_array_equal(whole["views"]["a"], other["views"]["a"])
        np.testing.assert_array_equal(
            whole["views"]["a"], np.concatenate([a["views"]["a"], b["views"]["a"]])
        )


def test_pk_loader_errors_name_the_fields():
    src = ProceduralFineGrained(
        "all", num_coarse=1, fine_per_coarse=2, images_per_class=4, image_size=8
    )
    kw = dict(views=[ViewSpec("a", 8)], seed=0, num_workers=0, sampler="pk")
    with pytest.raises(
        ValueError, match=r"pk_classes=2 x config.data.pk_images=3 .*config.train.batch_size=4"
    ):
        make_train_loader(src, global_batch_size=4, pk_classes=2, pk_images=3, **kw)
    with pytest.raises(ValueError, match="pk_classes=4 exceeds the 2 classes"):
        make_train_loader(src, global_batch_size=4, pk_classes=4, pk_images=1, **kw)
    with pytest.raises(ValueError, match="keep_last_batch=False"):
        make_train_loader(src, global_batch_size=4, pk_classes=2, pk_images=2, keep_last=True, **kw)
    with pytest.raises(ValueError, match="config.data.sampler must be"):
        make_train_loader(src, global_batch_size=4, **{**kw, "sampler": "balanced"})
