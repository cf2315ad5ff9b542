"""grain train/eval loaders: crops, decoding, determinism, sharding, resumable state."""

import dataclasses
import math
import os
import pickle
import re
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from fgjax.data.decode import (
    INTERPOLATIONS,
    ImageDecodeError,
    parallel_path,
    random_crop_views,
    resize_center_crop,
    sample_crop,
)
from fgjax.data.eval_loader import eval_crops, make_eval_loader
from fgjax.data.procedural import ProceduralFineGrained
from fgjax.data.sources import CsvManifestSource, ImageFolderSource
from fgjax.data.train_loader import last_batch_size, make_train_loader, steps_per_epoch
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
        return {
            "image": self.images[i],
            "label": int(self.labels[i]),
            "coarse_label": -1,
            "index": i,
        }

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
            {"image": img},
            np.random.default_rng(seed),
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
    views = random_crop_views(
        record, np.random.default_rng(0), [ViewSpec(n, 32, crop_scale=(0.5, 1.0)) for n in "ab"]
    )
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
    views = random_crop_views({"path": str(grey)}, np.random.default_rng(0), [ViewSpec("a", 8)])[
        "a"
    ]
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
    loader = make_train_loader(
        src, global_batch_size=2, views=[ViewSpec("a", 8)], seed=0, num_workers=0
    )
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
    parts = [list(make_train_loader(src, process_index=p, process_count=3, **kw)) for p in range(3)]
    assert len(full) == 5 and all(len(p) == 5 for p in parts)
    for t, batch in enumerate(full):
        for k in ("label", "coarse_label", "index"):
            np.testing.assert_array_equal(
                batch[k], np.concatenate([parts[p][t][k] for p in range(3)])
            )
        for name, v in batch["views"].items():
            np.testing.assert_array_equal(
                v, np.concatenate([parts[p][t]["views"][name] for p in range(3)])
            )
    with pytest.raises(ValueError, match="multiple of process_count"):
        make_train_loader(src, process_count=4, **kw)
    with pytest.raises(ValueError, match="fewer than global_batch_size"):
        make_train_loader(ArraySource(4), **kw)


def test_train_loader_keep_last_yields_each_epochs_remainder():
    src = ArraySource(22)
    kw = dict(global_batch_size=6, views=[ViewSpec("a", 6)], seed=2, num_workers=0)
    assert steps_per_epoch(22, 6, keep_last=True) == 4 and last_batch_size(22, 6, True) == 4
    assert last_batch_size(18, 6, True) == 6 and last_batch_size(22, 6) == 6
    batches = list(make_train_loader(src, num_epochs=2, keep_last=True, **kw))
    assert [len(b["index"]) for b in batches] == [6, 6, 6, 4] * 2
    dropped = list(make_train_loader(src, num_epochs=2, **kw))
    for e in (0, 1):  # every record once per epoch; the full batches are drop-last's
        epoch = batches[4 * e : 4 * e + 4]
        assert sorted(np.concatenate([b["index"] for b in epoch]).tolist()) == list(range(22))
        for kept, drop in zip(epoch[:3], dropped[3 * e : 3 * e + 3], strict=True):
            np.testing.assert_array_equal(kept["index"], drop["index"])
    _assert_batches_equal(batches[:3], dropped[:3])  # same crops until the streams shift
    assert batches[3]["views"]["a"].shape == (4, 6, 6, 3)
    parts = [
        list(make_train_loader(src, num_epochs=1, keep_last=True, process_index=p,
                               process_count=2, **kw))
        for p in range(2)
    ]  # fmt: skip
    for t in range(4):
        whole = np.concatenate([parts[p][t]["index"] for p in range(2)])
        np.testing.assert_array_equal(whole, batches[t]["index"])
    with pytest.raises(ValueError, match="last batch of each epoch holds 5"):
        make_train_loader(ArraySource(23), keep_last=True, process_count=2, **kw)


def test_train_loader_state_resume_and_worker_independence():
    src = ProceduralFineGrained(
        "train", num_coarse=2, fine_per_coarse=4, images_per_class=8, image_size=16
    )
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


def test_view_spec_validates_fields_naming_the_view():
    v = ViewSpec("key", 8, crop_scale=[0.2, 1], crop_ratio=[0.5, 2])  # config lists -> tuples
    assert v.crop_scale == (0.2, 1.0) and v.crop_ratio == (0.5, 2.0)
    assert v.root == "" and v.interpolation == "bilinear"
    same = ViewSpec("key", 8, (0.2, 1.0), (0.5, 2.0))
    assert v == same and hash(v) == hash(same)
    assert ViewSpec("d", 8, root=Path("/data/ddt")).root == "/data/ddt"
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.size = 16
    for kwargs, match in [
        (dict(size=0), "view 'key': size must be >= 1"),
        (dict(size=True), "view 'key': size must be an integer"),
        (dict(size=8.0), "view 'key': size must be an integer"),
        (dict(size=8, crop_scale=(0.5, 0.2)), "view 'key': crop_scale"),
        (dict(size=8, crop_scale=(0.0, 1.0)), "view 'key': crop_scale"),
        (dict(size=8, crop_scale=(0.2, 1.5)), "view 'key': crop_scale"),
        (dict(size=8, crop_scale=(0.5,)), "view 'key': crop_scale must be two numbers"),
        (dict(size=8, crop_ratio=(2.0, 1.0)), "view 'key': crop_ratio"),
        (dict(size=8, crop_ratio=(0.0, 1.0)), "view 'key': crop_ratio"),
        (dict(size=8, interpolation="cubic"), "view 'key': interpolation"),
        (dict(size=8, root=None), "view 'key': root"),
    ]:
        with pytest.raises(ValueError, match=match):
            ViewSpec("key", **kwargs)
    with pytest.raises(ValueError, match="view name"):
        ViewSpec("", 8)


def _previous_random_crop_views(
    record, rng, *, image_size, num_views, crop_scale, crop_ratio, interpolation
):
    """`random_crop_views` as it was before ViewSpec (d0f6d1d:fgjax/data/pipeline.py, minus
    its error handling, plus the later floor draft sizes): one image size, crop and
    interpolation for every view."""
    if "image" in record:
        img, path = Image.fromarray(record["image"]), None
    else:
        img, path = Image.open(record["path"]), record["path"]
    with img:
        width, height = img.size
        boxes, flips = [], []
        for _ in range(num_views):
            boxes.append(sample_crop(rng, height, width, crop_scale, crop_ratio))
            flips.append(bool(rng.uniform() < 0.5))
        min_crop_side = min(min(b[2], b[3]) for b in boxes)
        if path is not None and img.format == "JPEG":
            for f in (8, 4, 2):
                if min_crop_side / f >= image_size:
                    img.draft("RGB", (width // f, height // f))
                    break
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
        sx, sy = img.size[0] / width, img.size[1] / height
        out = np.empty((num_views, image_size, image_size, 3), np.uint8)
        resample = INTERPOLATIONS[interpolation]
        for v, ((top, left, h, w), flip) in enumerate(zip(boxes, flips, strict=True)):
            x0, y0, x1, y1 = left * sx, top * sy, (left + w) * sx, (top + h) * sy
            c0, r0 = math.floor(x0), math.floor(y0)
            c1, r1 = min(math.ceil(x1), img.size[0]), min(math.ceil(y1), img.size[1])
            view = img.crop((c0, r0, c1, r1)).resize(
                (image_size, image_size), resample, box=(x0 - c0, y0 - r0, x1 - c0, y1 - r0)
            )
            if flip:
                view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out[v] = np.asarray(view)
    return out


def _write_folder(root, images, fmt="png"):
    """root/train/<class>/<name>.<fmt> for every (class, name) -> uint8 image."""
    for (cls, name), img in images.items():
        path = root / "train" / cls / f"{name}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, **({"quality": 90} if fmt == "jpg" else {}))
    return root


def test_two_equal_views_are_bit_identical_to_the_previous_two_view_output(tmp_path, monkeypatch):
    sizes = [(240, 320), (300, 200), (90, 120), (64, 64), (400, 300), (50, 80)]
    jpegs = ImageFolderSource(
        str(
            _write_folder(
                tmp_path / "cub",
                {(f"c{k % 2}", f"i{k}"): _smooth_image(*hw) for k, hw in enumerate(sizes)},
                "jpg",
            )
        ),
        "train",
    )
    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile,
        "draft",
        lambda self, mode, size: drafts.append(size) or original(self, mode, size),
    )
    for src in (jpegs, ArraySource(6)):
        for crop in (
            dict(crop_scale=(0.3, 1.0), crop_ratio=(3 / 4, 4 / 3), interpolation="bilinear"),
            dict(crop_scale=(0.08, 0.5), crop_ratio=(0.5, 2.0), interpolation="bicubic"),
        ):
            views = [ViewSpec(name, 24, **crop) for name in ("q", "k")]
            loader = make_train_loader(
                src, global_batch_size=4, views=views, seed=9, num_workers=0, num_epochs=2
            )
            for t, batch in enumerate(loader):
                for i, index in enumerate(batch["index"]):
                    rng = np.random.default_rng([9, 1, 4 * t + i])  # (seed, crop tag, position)
                    ref = _previous_random_crop_views(
                        src[int(index)], rng, image_size=24, num_views=2, **crop
                    )
                    np.testing.assert_array_equal(batch["views"]["q"][i], ref[0])
                    np.testing.assert_array_equal(batch["views"]["k"][i], ref[1])
    assert drafts  # the JPEG draft path was exercised


def test_views_of_one_root_share_one_decode_drafted_for_the_largest_view(tmp_path, monkeypatch):
    src = ImageFolderSource(
        str(_write_folder(tmp_path / "cub", {("c", "a"): _smooth_image(512, 640)}, "jpg")), "train"
    )
    ddt = _write_folder(tmp_path / "ddt", {("c", "a"): _smooth_image(300, 400)}, "jpg")
    opened, drafts = [], []
    original_open, original_draft = Image.open, JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(Image, "open", lambda p, *a: opened.append(p) or original_open(p, *a))
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile,
        "draft",
        lambda self, mode, size: drafts.append(size) or original_draft(self, mode, size),
    )

    def crop(*views):
        opened.clear()
        drafts.clear()
        return random_crop_views(src[0], np.random.default_rng(0), views, source_root=src.root)

    big = ViewSpec("big", 200, crop_scale=(0.9, 1.0))  # every crop side >= 470 px
    small = ViewSpec("small", 16, crop_scale=(0.9, 1.0))
    crop(small)
    assert opened == [src[0]["path"]] and drafts == [(80, 64)]  # 1/8: 470 / 8 >= 16
    out = crop(big, small)
    assert opened == [src[0]["path"]] and drafts == [(320, 256)]  # one decode, 1/2 for big
    assert out["big"].shape == (200, 200, 3) and out["small"].shape == (16, 16, 3)
    out = crop(big, dataclasses.replace(small, root=str(ddt)))
    ddt_path = str(ddt / "train" / "c" / "a.jpg")
    assert opened == [src[0]["path"], ddt_path]  # each root its own file, own draft factor
    assert drafts == [(320, 256), (50, 37)]  # ddt 400 x 300: crop sides >= 284, 284 / 8 >= 16


def test_a_view_with_a_root_reads_the_parallel_file(tmp_path):
    rng = np.random.default_rng(0)
    originals, parallels = {}, {}
    for k in range(6):
        key = (f"{k % 3:03d}.bird", f"img{k}")
        originals[key] = np.full((30, 40, 3), (200, 10 * k, 30), np.uint8)  # solid colours
        h, w = 50 + 7 * k, 70 - 4 * k  # other sizes, asymmetric gradients
        grad = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
        parallels[key] = (grad * (1, 0.5, 0.2) + rng.integers(0, 3, (h, w, 3))).astype(np.uint8)
    src = ImageFolderSource(str(_write_folder(tmp_path / "CUB", originals)), "train")
    ddt = _write_folder(tmp_path / "CUB_ddt", parallels)
    views = [
        ViewSpec("orig", 16),
        ViewSpec("ddt", 12, crop_scale=(1.0, 1.0), crop_ratio=(0.1, 10.0), root=str(ddt)),
        ViewSpec("ddt_small", 5, crop_scale=(0.2, 0.5), interpolation="nearest", root=str(ddt)),
    ]
    flips = 0
    for batch in make_train_loader(
        src, global_batch_size=3, views=views, seed=1, num_workers=0, num_epochs=2
    ):
        assert batch["views"]["orig"].shape == (3, 16, 16, 3)
        assert batch["views"]["ddt"].shape == (3, 12, 12, 3)
        assert batch["views"]["ddt_small"].shape == (3, 5, 5, 3)
        for i, index in enumerate(batch["index"]):
            record = src[int(index)]
            rel = os.path.relpath(record["path"], src.root)
            assert rel.startswith("train" + os.sep)
            whole = Image.open(ddt / rel).convert("RGB").resize((12, 12), Image.BILINEAR)
            ref, view = np.asarray(whole), batch["views"]["ddt"][i]
            flipped = np.array_equal(view, ref[:, ::-1])
            assert flipped or np.array_equal(view, ref)
            flips += flipped
            # The own-root view: the solid colour of the original file.
            colour = np.asarray(Image.open(record["path"]).convert("RGB"))[0, 0]
            assert (batch["views"]["orig"][i] == colour).all()
            # Parallel pixels have G = R / 2 (+ noise); no original colour (200, 10 k, 30) has.
            px = batch["views"]["ddt_small"][i].astype(int)
            assert (np.abs(px[..., 1] - px[..., 0] / 2) <= 3).all()
    assert 0 < flips < 12


def test_view_root_errors(tmp_path):
    procedural = ProceduralFineGrained(
        "train", num_coarse=2, fine_per_coarse=2, images_per_class=2, image_size=16
    )
    ddt = ViewSpec("ddt", 8, root=str(tmp_path))
    kw = dict(global_batch_size=2, seed=0, num_workers=0)
    with pytest.raises(ValueError, match="view 'ddt'.*in-memory image"):
        make_train_loader(procedural, views=[ViewSpec("a", 8), ddt], **kw)

    class NoRoot(ArraySource):  # path records, no `root`
        def __getitem__(self, i):
            return {"path": f"/x/{i}.png", "label": 0, "index": i}

    with pytest.raises(ValueError, match="view 'ddt'.*needs a source with a `root`"):
        make_train_loader(NoRoot(4), views=[ddt], **kw)
    with pytest.raises(ValueError, match="not under the source root"):
        parallel_path({"path": "/elsewhere/a.jpg"}, ddt.root, "/data/CUB", "view 'ddt' root")
    assert (
        parallel_path({"path": "/data/CUB/train/001.x/a.jpg"}, "/data/CUB_ddt", "/data/CUB", "d")
        == "/data/CUB_ddt/train/001.x/a.jpg"
    )
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        make_train_loader(ArraySource(4), views=[ViewSpec("a", 8), ViewSpec("a", 4)], **kw)
    with pytest.raises(ValueError, match="at least one ViewSpec"):
        make_train_loader(ArraySource(4), views=[], **kw)
    with pytest.raises(TypeError, match="ViewSpec instances"):
        make_train_loader(ArraySource(4), views=[("a", 8)], **kw)


def test_a_missing_parallel_file_names_its_path(tmp_path):
    images = {(c, n): _smooth_image(20, 20) for c in ("a", "b") for n in ("x", "y")}
    src = ImageFolderSource(str(_write_folder(tmp_path / "CUB", images)), "train")
    ddt = _write_folder(tmp_path / "ddt", images)
    (ddt / "train" / "b" / "y.png").unlink()
    views = [ViewSpec("orig", 8), ViewSpec("ddt", 8, root=str(ddt))]
    loader = make_train_loader(src, global_batch_size=4, views=views, seed=0, num_workers=0)
    missing = str(ddt / "train" / "b" / "y.png")
    with pytest.raises(ImageDecodeError, match=re.escape(repr(missing))):
        next(iter(loader))
    # The same through a CSV manifest, whose relative paths hang from its csv_root.
    (tmp_path / "m.csv").write_text("path,label\ntrain/a/x.png,0\ntrain/b/y.png,1\n")
    csv = CsvManifestSource(str(tmp_path / "m.csv"), root=str(tmp_path / "CUB"))
    assert csv.root == str(tmp_path / "CUB")
    loader = make_train_loader(csv, global_batch_size=2, views=views, seed=0, num_workers=0)
    with pytest.raises(ImageDecodeError, match=re.escape(repr(missing))):
        next(iter(loader))


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


def test_eval_crops_follow_config_eval_resize_ratio():
    # CFGA's metric-learning test transform: Resize(256) + CenterCrop(227), i.e. the ratio
    # 227 / 256 (the default 0.875 would resize to round(227 / 0.875) = 259).
    img = np.random.default_rng(4).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    data = ml_collections.ConfigDict(
        dict(image_size=227, eval_resize="short_side", eval_squash_size=0)
    )
    data.eval_resize_ratio = 227 / 256
    (out,) = eval_crops([{"image": img}], [0], data)
    # short side 256, long int(256 * 400 / 300) = 341; offsets round(29 / 2), 114 / 2
    ref = np.asarray(Image.fromarray(img).resize((341, 256), Image.BILINEAR))[14:241, 57:284]
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
        batches[0]["images"][1], resize_center_crop(src[1], image_size=10)
    )
    for b in batches:
        np.testing.assert_array_equal(b["label"][b["mask"]], src.labels[b["index"][b["mask"]]])
    # Re-iterable and deterministic.
    _assert_batches_equal(batches, list(loader))
    # Processes: disjoint shares, same number of batches, union = everything.
    shares = [
        list(make_eval_loader(src, batch_size=4, image_size=10, process_index=p, process_count=3))
        for p in range(3)
    ]
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
    loader = make_train_loader(
        train, global_batch_size=8, views=views, seed=0, num_workers=2, num_epochs=1
    )
    batch = next(iter(loader))
    assert batch["views"]["q"].shape == batch["views"]["k"].shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(batch["label"], train.labels[batch["index"]])
    assert batch["views"]["q"].std() > 10  # real pixels, not zeros


def test_eval_root_reads_every_evaluation_image_from_the_parallel_root(tmp_path):
    """config.data.eval_root: evaluation (the run's `sources`) reads each record's file at
    the same relative path under the parallel root, whole (the dataset's box dropped);
    the train loader keeps the dataset's own images."""
    from conftest import tiny_config

    from fgjax.data.sources import LabeledSource, ParallelRootSource
    from fgjax.train.run import Run

    rng = np.random.default_rng(0)
    rel = [f"{split}/{c}/{i}.png" for split in ("train", "test") for c in "ab" for i in range(2)]
    for root, size in ((tmp_path / "data", (30, 40)), (tmp_path / "crops", (12, 18))):
        for r in rel:
            (root / r).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / r)

    source = LabeledSource(
        dataset="t",
        split="test",
        labels=np.zeros(2, np.int32),
        class_names=["a"],
        root=str(tmp_path / "data"),
        paths=rel[4:6],
        boxes=np.float32([[3, 4, 20, 10]] * 2),
    )
    crops = ParallelRootSource(source, str(tmp_path / "crops"), "config.data.eval_root")
    record = crops[1]
    assert record["path"] == str(tmp_path / "crops" / rel[5]) and "box" not in record
    assert crops.labels is source.labels and len(crops) == 2
    assert crops.paths == [str(tmp_path / "crops" / r) for r in rel[4:6]]
    assert pickle.loads(pickle.dumps(crops))[1] == record  # grain workers get a copy
    (batch,) = list(make_eval_loader(crops, batch_size=2, image_size=8, num_workers=0))
    want = resize_center_crop({"path": record["path"]}, image_size=8)
    np.testing.assert_array_equal(batch["images"][1], want)
    assert not np.array_equal(want, resize_center_crop(source[1], image_size=8))
    outside = LabeledSource(
        dataset="t", split="x", labels=[0], class_names=["a"], paths=["/elsewhere/a.png"]
    )
    with pytest.raises(ValueError, match="config.data.eval_root.*needs a source with a `root`"):
        ParallelRootSource(outside, str(tmp_path / "crops"), "config.data.eval_root")

    config = tiny_config("moco")
    config.data.kind, config.data.root = "image_folder", str(tmp_path / "data")
    config.data.eval_root = str(tmp_path / "crops")
    config.train.batch_size = 2
    run = Run(config)
    for role in ("train", "test"):
        assert run.sources[role][0]["path"].startswith(str(tmp_path / "crops"))
    assert run.train_source[0]["path"].startswith(str(tmp_path / "data"))
