"""JPEG decoding at reduced DCT scale (PIL draft mode), and the input-pipeline benchmark's
bookkeeping (benchmarks/input_pipeline.py)."""

import importlib.util
import math
import os

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from fgjax.data.decode import _decode, random_crop_views, sample_crop
from fgjax.data.views import ViewSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smooth_jpeg(path, width, height):
    """A smooth colour image (so a reduced decode is close to a resized full one)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack(
        [
            127 + 100 * np.sin(x / 97 + y / 131),
            127 + 100 * np.cos(x / 83 - y / 113),
            127 + 100 * np.sin((x + y) / 151),
        ],
        -1,
    )
    Image.fromarray(img.round().astype(np.uint8)).save(path, quality=95)
    return str(path)


@pytest.mark.parametrize(
    "out_side, factor",
    [(40, 8), (90, 4), (180, 2), (200, 1)],  # shortest crop side 375: 375 / f >= out_side
)
def test_odd_sized_jpegs_are_decoded_at_the_largest_factor_their_crops_allow(
    tmp_path, out_side, factor
):
    # 501 x 375: PIL's draft asked for ceil sizes gave factor 4 for 8 and none for 2.
    path = _smooth_jpeg(tmp_path / "odd.jpg", 501, 375)
    with Image.open(path) as img:
        decoded, sx, sy = _decode(img, path, [(375, out_side)])
        assert decoded.size == (math.ceil(501 / factor), math.ceil(375 / factor))
        assert (sx, sy) == (decoded.size[0] / 501, decoded.size[1] / 375)
        assert 375 * min(sx, sy) >= out_side  # the crop keeps at least its output side


def test_crops_of_a_drafted_odd_sized_jpeg_match_crops_of_its_full_decode(tmp_path, monkeypatch):
    path = _smooth_jpeg(tmp_path / "odd.jpg", 501, 375)
    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile,
        "draft",
        lambda self, mode, size: drafts.append(size) or original(self, mode, size),
    )
    view = ViewSpec("a", 24, crop_scale=(0.5, 1.0))
    full = np.asarray(Image.open(path).convert("RGB"))
    for seed in range(4):
        out = random_crop_views({"path": path}, np.random.default_rng(seed), [view])["a"]
        # The same draws on the full decode: box, then flip.
        rng = np.random.default_rng(seed)
        top, left, h, w = sample_crop(rng, 375, 501, view.crop_scale, view.crop_ratio)
        ref = Image.fromarray(full[top : top + h, left : left + w]).resize(
            (24, 24), Image.Resampling.BILINEAR
        )
        if rng.uniform() < 0.5:
            ref = ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        assert min(h, w) / 8 >= 24  # so the file was drafted at 1/8 ...
        assert drafts[-1] == (501 // 8, 375 // 8)
        diff = np.abs(out.astype(np.int16) - np.asarray(ref, np.int16))
        # ... yet the same crop of the image (~1.2; a box 4 px off, half a drafted pixel: ~3.5)
        assert diff.mean() < 2.0, (seed, diff.mean())


def _benchmark_module():
    spec = importlib.util.spec_from_file_location(
        "input_pipeline", os.path.join(REPO, "benchmarks", "input_pipeline.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_manifest_and_table(tmp_path):
    bench = _benchmark_module()
    for cls, names in {"b_cls": ["y.jpg", "x.JPG"], "a_cls": ["z.jpg", "notes.txt"]}.items():
        (tmp_path / "images" / cls).mkdir(parents=True)
        for name in names:
            (tmp_path / "images" / cls / name).write_bytes(b"")
    csv_path = str(tmp_path / "m.csv")
    assert bench.write_manifest(str(tmp_path / "images"), csv_path) == 3
    paths, labels = bench.read_manifest(csv_path, "/root")
    assert paths == ["/root/a_cls/z.jpg", "/root/b_cls/x.JPG", "/root/b_cls/y.jpg"]
    assert labels == [0, 1, 1]

    rows = [
        {"pipeline": "torchvision", "runs": [90, 100, 110], "wall": 100.0},
        {"pipeline": "fgjax", "runs": [150, 140, 160], "wall": 150.0},
    ]
    rows = [{**r, "dataset": "full", "cpu": r["wall"] / 2} for r in rows]
    rows[1]["cpu"] = 60.0
    lines = bench.table(rows, cores=2).splitlines()
    assert len(lines) == 4
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    # examples/s, per core (150 / 2), ratio 150 / 100, per CPU-second, ratio 60 / 50, runs
    assert cells[2:] == ["150", "75", "1.50x", "60", "1.20x", "150, 140, 160"]
