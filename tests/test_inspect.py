"""python -m fgjax.cli.inspect: summary numbers against the CUB index files, the contact
sheet (boxes drawn where crops are taken), and --verify on broken image files."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, data_config, index_table
from PIL import Image

from fgjax.cli.inspect import main
from fgjax.data.datasets import build_source
from fgjax.data.summary import BOX_COLOR, _tile, contact_sheet
from fgjax.data.verify import find_bad_images

RECIPE = os.path.join(REPO, "configs", "cub_moco.py")


def _red_pixels(path_or_image) -> int:
    img = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return int(np.all(np.asarray(img.convert("RGB")) == BOX_COLOR, axis=-1).sum())


def test_cub_summary_equals_index_files(tmp_path, cub_root, capsys):
    status = main(
        [
            "--config",
            RECIPE,
            "--config.data.kind=cub",
            f"--config.data.root={cub_root}",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    report = json.loads((tmp_path / "summary.json").read_text())
    base = os.path.join(cub_root, "CUB_200_2011")
    is_train = {k: v.strip() == "1" for k, v in index_table(f"{base}/train_test_split.txt").items()}
    label = {k: int(v) for k, v in index_table(f"{base}/image_class_labels.txt").items()}
    names = {int(k): v.strip() for k, v in index_table(f"{base}/classes.txt").items()}
    for split, want_train in (("train", True), ("test", False)):
        s = report["splits"][split]
        counts = collections.Counter(label[i] for i in label if is_train[i] == want_train)
        assert s["num_images"] == sum(counts.values()) == 101
        assert s["num_classes"] == len(counts) == 50
        assert s["smallest_class"]["count"] == min(counts.values())
        assert s["largest_class"]["count"] == max(counts.values())
        assert counts[
            int(next(k for k, v in names.items() if v == s["largest_class"]["name"]))
        ] == max(counts.values())
        families = {names[c].split("_")[-1] for c in counts}
        assert s["coarse"] == {
            "level": "family",
            "num_classes": len(families),
            "num_class_names": len(families),
        }
        assert s["image_size"]["sampled"] == s["image_size"]["of"] == 101
        # Contact sheet: 16 classes spread over the 50 in 8 rows of 2 blocks, as many
        # columns as the most images of a shown class (at most 4).
        shown = np.linspace(0, 49, 16).round().astype(int) + 1  # official class ids
        sheet = Image.open(tmp_path / f"contact_{split}.png")
        per_class = min(4, max(counts[c] for c in shown))
        assert sheet.size == (2 * per_class * 132 + 4, 8 * 146 + 4)
        pixels = np.asarray(sheet.convert("RGB")).astype(int)
        assert pixels.std() > 30 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 5000
        assert _red_pixels(sheet) < 50  # no boxes without crop_to_box
    src = build_source(data_config("cub", cub_root), "train")
    sizes = [Image.open(p).size for p in src.paths]
    width = report["splits"]["train"]["image_size"]["width"]
    assert width == {
        "min": min(w for w, _ in sizes),
        "median": float(np.median([w for w, _ in sizes])),
        "max": max(w for w, _ in sizes),
    }
    out = capsys.readouterr().out
    assert "cub/train: 101 images, 50 classes" in out and "all 101 images" in out


def test_contact_sheet_draws_the_box(tmp_path, cub_root):
    boxed = build_source(data_config("cub", cub_root, crop_to_box=True), "test")
    plain = build_source(data_config("cub", cub_root), "test")
    contact_sheet(boxed, str(tmp_path / "boxed.png"))
    shown = contact_sheet(plain, str(tmp_path / "plain.png"))
    assert len(shown) == 16 and shown[0] == 0 and shown[-1] == 49
    # Every one of the 32 tiles gets a 2 px rectangle of at least ~40 px sides.
    assert _red_pixels(tmp_path / "boxed.png") > 32 * 300 > 50 * _red_pixels(tmp_path / "plain.png")
    # The rectangle lies where the box is: its left edge at x0 + left * scale.
    record = boxed[0]
    tile = _tile(record, 128)
    W, H = Image.open(record["path"]).size
    s = min(128 / W, 128 / H)
    x0, y0 = (128 - round(W * s)) // 2, (128 - round(H * s)) // 2
    left, top, w, h = record["box"]
    column = np.asarray(tile)[:, int(x0 + left * s) : int(x0 + left * s) + 2]
    rows = np.flatnonzero(np.all(column == BOX_COLOR, axis=-1).any(axis=1))
    assert abs(rows.min() - (y0 + top * s)) <= 2 and abs(rows.max() - (y0 + (top + h) * s)) <= 2
    assert _red_pixels(_tile(plain[0], 128)) == 0


def _jpeg(path, seed, size=48):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(path, quality=90)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for c, cls in enumerate(("crow", "wren")):
            (root / split / cls).mkdir(parents=True)
            for k in range(2):
                _jpeg(root / split / cls / f"{k}.jpg", seed=(c, k, len(split)))
    return root


def _verify_args(root, out, *extra):
    return [
        "--config",
        RECIPE,
        "--config.data.kind=image_folder",
        f"--config.data.root={root}",
        "--config.data.image_size=32",
        "--out",
        str(out),
        "--verify",
        *extra,
    ]


def test_verify_lists_exactly_the_broken_files(tmp_path, image_folder, capsys):
    crow = image_folder / "train" / "crow"
    data = (crow / "0.jpg").read_bytes()
    (crow / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (crow / "empty.jpg").write_bytes(b"")
    (image_folder / "test" / "wren" / "notes.jpg").write_text("not an image\n" * 20)
    status = main(_verify_args(image_folder, tmp_path / "out", "--num_workers=2"))
    assert status == 1
    lines = (tmp_path / "out" / "bad_images.txt").read_text().splitlines()
    listed = sorted(os.path.relpath(line.split("\t")[1], image_folder) for line in lines)
    assert listed == ["test/wren/notes.jpg", "train/crow/empty.jpg", "train/crow/truncated.jpg"]
    reasons = {os.path.basename(line.split("\t")[1]): line.split("\t")[2] for line in lines}
    assert "truncated" in reasons["truncated.jpg"] and "cannot" in reasons["notes.jpg"]
    assert "3 bad image(s)" in capsys.readouterr().out
    # The function training code calls: same files, in index order.
    source = build_source(data_config("image_folder", image_folder), "train")
    bad = find_bad_images(source, num_workers=0, show_progress=False, image_size=32)
    assert [os.path.basename(b.path) for b in bad] == ["empty.jpg", "truncated.jpg"]
    assert [source.paths[b.index] for b in bad] == [b.path for b in bad]


def test_verify_clean_folder_exits_0(tmp_path, image_folder):
    assert main(_verify_args(image_folder, tmp_path, "--num_workers=0")) == 0
    assert (tmp_path / "bad_images.txt").read_text() == ""
    report = json.loads((tmp_path / "summary.json").read_text())
    assert report["splits"]["test"]["bad_images"] == 0
    assert report["splits"]["test"]["image_size"]["width"]["max"] == 48


def test_in_memory_source_reports_array_shape(tmp_path):
    demo = os.path.join(REPO, "configs", "demo.py")
    args = ["--config", demo, "--config.data.procedural.images_per_class=3", "--out", str(tmp_path)]
    assert main(args) == 0
    s = json.loads((tmp_path / "summary.json").read_text())["splits"]["train"]
    assert s["image_size"] == {"source": "memory", "shape": [s["num_images"], 32, 32, 3]}
    assert s["smallest_class"]["count"] == s["largest_class"]["count"] == 3


def test_command_line_errors_and_help(tmp_path):
    with pytest.raises(SystemExit, match="unknown config field config.data.roots"):
        main(["--config", RECIPE, "--config.data.roots=x"])
    with pytest.raises(SystemExit, match="give --config"):
        main(["--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"official CUB_200_2011.*Found there: an empty folder"):
        main(["--config", RECIPE, f"--config.data.root={tmp_path}", "--out", str(tmp_path)])
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run(
        [sys.executable, "-m", "fgjax.cli.inspect", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--verify" in done.stdout and "--num_workers" in done.stdout
