"""grain train/eval loaders: crops, decoding, determinism, sharding, resumable state."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from fgjax.data.decode import (
    ImageDecodeError,
    random_crop_views,
    resize_center_crop,
    sample_crop,
)
from fgjax.data.eval_loader import make_eval_loader
from fgjax.data.procedural import ProceduralFineGrained
from fgjax.data.sources import CsvManifestSource
from fgjax.data.train_loader import make_train_loader, steps_per_epoch
from fgjax.data.views import ViewSpec

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


class ArraySource:
    """In-memory source of random images of assorted sizes."""

    def __init__(self, n, sizes=((20, 30), (33, 17), (24, 24)), seed=0):
        rng = np.random.default_rng(seed)
        self.images = [
            rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)
        ]
        self.labels = np.arange(n, dtype=np.int32) % 7
        self.num_classes, self.class_names, self.num_coarse_classes = 7, list("abcdefg"), 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(self.labels[i]), "coarse_label": -1,
                "index": i}

    def __repr__(self):
        return f"ArraySource(n={len(self)})"


def test_steps_per_epoch_drop_last():
    assert steps_per_epoch(5994, 128) == 46  # CUB
    assert steps_per_epoch(8144, 128) == 63  # Cars
    assert steps_per_epoch(6667, 128) == 52  # Aircraft
    assert steps_per_epoch(127, 128) == 0
    assert steps_per_epoch(256, 128) == 2


def test_sample_crop_respects_scale_ratio_and_bounds():
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(500):
        top, left, h, w = sample_crop(rng, 60, 80, (0.2, 0.6), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        fractions.append(h * w / (60 * 80))
        assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1  # up to rounding
    fractions = np.array(fractions)
    assert fractions.min() > 0.18 and fractions.max() < 0.63
    assert abs(fractions.mean() - 0.4) < 0.03
    # Impossible aspect: falls back to the largest centred box with the ratio clamped.
    assert sample_crop(rng, 40, 40, (1.0, 1.0), (2.0, 3.0)) == (10, 0, 20, 40)
    assert sample_crop(rng, 40, 40, (1.0, 1.0), (1.0, 1.0)) == (0, 0, 40, 40)


def test_identity_crop_reproduces_the_image_or_its_mirror():
    img = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    flips = 0
    for seed in range(40):
        views = random_crop_views(
            {"image": img}, np.random.default_rng(seed),
            [ViewSpec(n, 24, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)) for n in "ab"],
        )
        assert list(views) == ["a", "b"]
        for v in views.values():
            if np.array_equal(v, img[:, ::-1]):
                flips += 1
            else:
                np.testing.assert_array_equal(v, img)
    assert 25 <= flips <= 55  # p = 0.5 of 80 views


def test_random_crop_matches_an_independent_pil_crop():
    img = np.random.default_rng(2).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    specs = [ViewSpec(n, 16, crop_scale=(0.3, 1.0), interpolation="bicubic") for n in "abc"]
    views = random_crop_views({"image": img}, np.random.default_rng(7), specs)
    rng = np.random.default_rng(7)  # replay: per view, the box then the flip draw
    for v in views.values():
        top, left, h, w = sample_crop(rng, 40, 52, (0.3, 1.0), (3 / 4, 4 / 3))
        flip = rng.uniform() < 0.5
        ref = Image.fromarray(img[top : top + h, left : left + w]).resize((16, 16), Image.BICUBIC)
        ref = np.asarray(ref)[:, ::-1] if flip else np.asarray(ref)
        np.testing.assert_array_equal(v, ref)


def _smooth_image(h, w):
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rgb = np.stack([np.sin(6 * x) * 0.5 + 0.5, np.cos(5 * y) * 0.5 + 0.5, x * y], -1)
    return (rgb * 255).astype(np.uint8)


def test_jpeg_draft_decoding_for_strong_downsampling(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.fromarray(_smooth_image(512, 640)).save(path, quality=95)
    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        drafts.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    record = {"path": str(path)}
    views = random_crop_views(record, np.random.default_rng(0),
                              [ViewSpec(n, 32, crop_scale=(0.5, 1.0)) for n in "ab"])
    assert drafts and drafts[0][0] <= 640 // 2  # decoded at 1/2 .. 1/8 scale
    rng = np.random.default_rng(0)
    full = Image.open(path).convert("RGB")
    for v in views.values():
        top, left, h, w = sample_crop(rng, 512, 640, (0.5, 1.0), (3 / 4, 4 / 3))
        flip = rng.uniform() < 0.5
        ref = np.asarray(full.resize((32, 32), Image.BILINEAR, box=(left, top, left + w, top + h)))
        ref = ref[:, ::-1] if flip else ref
        assert np.abs(v.astype(int) - ref.astype(int)).mean() < 3.0
    # Small crops of a small image: no draft.
    drafts.clear()
    random_crop_views(record, np.random.default_rng(0), [ViewSpec("a", 224)])
    assert not drafts


def test_greyscale_and_corrupt_files(tmp_path):
    grey = tmp_path / "grey.jpg"
    Image.fromarray(_smooth_image(30, 30)[..., 0]).save(grey)  # mode 'L', as some CUB images
    views = random_crop_views({"path": str(grey)}, np.random.default_rng(0),
                              [ViewSpec("a", 8)])["a"]
    assert views.shape == (8, 8, 3)
    assert (views[..., 0] == views[..., 1]).all() and (views[..., 1] == views[..., 2]).all()
    out = resize_center_crop({"path": str(grey)}, image_size=8)
    assert out.shape == (8, 8, 3)

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageDecodeError, match="garbage.jpg"):
        random_crop_views({"path": str(garbage)}, np.random.default_rng(0), [ViewSpec("a", 8)])
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(_smooth_image(64, 64)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated.jpg"):
        resize_center_crop({"path": str(truncated)}, image_size=8)
    # Through the loader too.
    (tmp_path / "m.csv").write_text("path,label\nok.jpg,0\ngarbage.jpg,1\n")
    src = CsvManifestSource(str(tmp_path / "m.csv"))
    loader = make_train_loader(src, global_batch_size=2, views=[ViewSpec("a", 8)], seed=0,
                               num_workers=0)
    with pytest.raises(ImageDecodeError, match="garbage.jpg"):
        next(iter(loader))


def _assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            if k == "views":
                assert x[k].keys() == y[k].keys()
                for name in x[k]:
                    np.testing.assert_array_equal(x[k][name], y[k][name])
            else:
                np.testing.assert_array_equal(x[k], y[k])


def test_train_loader_epochs_shapes_and_determinism():
    src = ArraySource(23)
    views = [ViewSpec("q", 12), ViewSpec("k", 12), ViewSpec("small", 6, crop_scale=(0.5, 1))]
    kw = dict(global_batch_size=5, views=views, seed=3, num_workers=0)
    batches = list(make_train_loader(src, num_epochs=2, **kw))
    assert len(batches) == 2 * steps_per_epoch(23, 5) == 8
    b = batches[0]
    assert list(b["views"]) == ["q", "k", "small"]
    assert b["views"]["q"].shape == b["views"]["k"].shape == (5, 12, 12, 3)
    assert b["views"]["small"].shape == (5, 6, 6, 3)
    assert all(v.dtype == np.uint8 for v in b["views"].values())
    for k in ("label", "coarse_label", "index"):
        assert b[k].shape == (5,) and b[k].dtype == np.int32
    for batch in batches:
        np.testing.assert_array_equal(batch["label"], src.labels[batch["index"]])
    epochs = [np.concatenate([x["index"] for x in batches[e * 4 : (e + 1) * 4]]) for e in (0, 1)]
    for idx in epochs:  # an epoch: 20 distinct records (remainder of 3 dropped)
        assert len(set(idx.tolist())) == 20
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    assert not np.array_equal(b["views"]["q"], b["views"]["k"])  # independent views
    again = list(make_train_loader(src, num_epochs=2, **kw))
    _assert_batches_equal(batches, again)
    other = next(iter(make_train_loader(src, num_epochs=2, **{**kw, "seed": 4})))
    assert not np.array_equal(other["index"], b["index"])
    # Infinite stream by default.
    it = iter(make_train_loader(src, **kw))
    assert len([next(it) for _ in range(10)]) == 10


def test_train_loader_process_shards_concatenate_to_the_global_batch():
    src = ArraySource(30)
    views = [ViewSpec("a", 8), ViewSpec("b", 5, crop_scale=(0.3, 0.9), interpolation="nearest")]
    kw = dict(global_batch_size=6, views=views, seed=11, num_workers=0, num_epochs=1)
    full = list(make_train_loader(src, **kw))
    parts = [list(make_train_loader(src, process_index=p, process_count=3, **kw))
             for p in range(3)]
    assert len(full) == 5 and all(len(p) == 5 for p in parts)
    for t, batch in enumerate(full):
        for k in ("label", "coarse_label", "index"):
            np.testing.assert_array_equal(
                batch[k], np.concatenate([parts[p][t][k] for p in range(3)]))
        for name, v in batch["views"].items():
            np.testing.assert_array_equal(
                v, np.concatenate([parts[p][t]["views"][name] for p in range(3)]))
    with pytest.raises(ValueError, match="multiple of process_count"):
        make_train_loader(src, process_count=4, **kw)
    with pytest.raises(ValueError, match="fewer than global_batch_size"):
        make_train_loader(ArraySource(4), **kw)


def test_train_loader_state_resume_and_worker_independence():
    src = ProceduralFineGrained("train", num_coarse=2, fine_per_coarse=4, images_per_class=8,
                                image_size=16)
    views = [ViewSpec("a", 16, crop_scale=(0.2, 1.0)), ViewSpec("b", 12)]
    kw = dict(global_batch_size=8, views=views, seed=5)
    reference = None
    for workers in (0, 2):
        loader = make_train_loader(src, num_workers=workers, **kw)
        it = iter(loader)
        first = [next(it) for _ in range(3)]
        state = it.get_state()
        after = [next(it) for _ in range(5)]  # crosses the 4-step epoch boundary
        fresh = iter(make_train_loader(src, num_workers=workers, **kw))
        fresh.set_state(state)
        _assert_batches_equal(after, [next(fresh) for _ in range(5)])
        if reference is None:
            reference = first + after
        else:  # bitwise the same stream whatever the number of workers
            _assert_batches_equal(reference, first + after)


def test_eval_resize_center_crop_matches_torchvision_geometry():
    img = np.random.default_rng(3).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    out = resize_center_crop({"image": img}, image_size=16, resize_ratio=0.875)
    # Resize(round(16 / 0.875) = 18): short side 18, long int(18 * 50 / 37) = 24, then
    # CenterCrop(16): offsets round((18 - 16) / 2) = 1 and round((24 - 16) / 2) = 4.
    ref = np.asarray(Image.fromarray(img).resize((24, 18), Image.BILINEAR))[1:17, 4:20]
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    # A portrait image.
    img = img.transpose(1, 0, 2)
    out = resize_center_crop({"image": img}, image_size=16, resize_ratio=0.875)
    ref = np.asarray(Image.fromarray(img).resize((18, 24), Image.BILINEAR))[4:20, 1:17]
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_eval_loader_covers_every_example_once_with_padding():
    src = ArraySource(23)
    loader = make_eval_loader(src, batch_size=5, image_size=10)
    batches = list(loader)
    assert len(loader) == len(batches) == 5
    idx = np.concatenate([b["index"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(idx, np.arange(23))  # source order, exactly once
    last = batches[-1]
    np.testing.assert_array_equal(last["mask"], [True, True, True, False, False])
    assert (last["label"][3:] == -1).all() and (last["images"][3:] == 0).all()
    assert last["images"].shape == (5, 10, 10, 3) and last["mask"].dtype == bool
    np.testing.assert_array_equal(
        batches[0]["images"][1], resize_center_crop(src[1], image_size=10))
    for b in batches:
        np.testing.assert_array_equal(b["label"][b["mask"]], src.labels[b["index"][b["mask"]]])
    # Re-iterable and deterministic.
    _assert_batches_equal(batches, list(loader))
    # Processes: disjoint shares, same number of batches, union = everything.
    shares = [list(make_eval_loader(src, batch_size=4, image_size=10, process_index=p,
                                    process_count=3)) for p in range(3)]
    assert {len(s) for s in shares} == {2}
    seen = np.concatenate([b["index"][b["mask"]] for s in shares for b in s])
    np.testing.assert_array_equal(np.sort(seen), np.arange(23))


def _cub_manifest(root: Path, tmp_path: Path) -> Path:
    def table(name):
        rows = (line.split(",") for line in (root / name).read_text().splitlines() if line)
        return {int(a): b.strip() for a, b in rows}

    images, labels = table("images.txt"), table("image_class_labels.txt")
    split = table("train_test_split.txt")  # in this copy: 1 = official TEST split
    lines = ["path,label,split"] + [
        f"images/{images[i]},{labels[i]},{'test' if split[i] == '1' else 'train'}"
        for i in sorted(images)
    ]
    (tmp_path / "cub.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "cub.csv"


def test_real_cub_crops_through_the_train_loader(tmp_path):
    root = SHARED_DATA / "cub100_crops227"
    if not (root / "images.txt").is_file():
        pytest.skip(f"real CUB-100 crops not found at {os.path.normpath(root)}")
    csv_path = _cub_manifest(root, tmp_path)
    train = CsvManifestSource(str(csv_path), split="train", root=str(root))
    test = CsvManifestSource(str(csv_path), split="test", root=str(root))
    assert len(train) + len(test) == 5902 and train.num_classes == 100
    assert 2500 < len(train) < 3400
    views = [ViewSpec(n, 64, crop_scale=(0.2, 1.0)) for n in ("q", "k")]
    loader = make_train_loader(train, global_batch_size=8, views=views, seed=0, num_workers=2,
                               num_epochs=1)
    batch = next(iter(loader))
    assert batch["views"]["q"].shape == batch["views"]["k"].shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(batch["label"], train.labels[batch["index"]])
    assert batch["views"]["q"].std() > 10  # real pixels, not zeros
