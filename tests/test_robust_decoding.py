"""Every image mode becomes RGB; undecodable files raise errors naming them, or with
config.data.skip_bad are replaced (training) / blacked out (evaluation) and reported."""

import json
import os

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from fgjax.data.decode import ImageDecodeError, resize_center_crop
from fgjax.data.eval_loader import make_eval_loader
from fgjax.data.sources import ImageFolderSource
from fgjax.data.train_loader import make_train_loader
from fgjax.data.views import ViewSpec


def _crop(path, size=8):
    return resize_center_crop({"path": str(path), "index": 0}, image_size=size)


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("L", 100, (100, 100, 100)),
        ("RGBA", (10, 200, 30, 0), (10, 200, 30)),  # alpha dropped, as torchvision's loader
        ("LA", (70, 255), (70, 70, 70)),
        ("CMYK", (255, 0, 0, 0), (0, 255, 255)),  # cyan
        ("P", None, (0, 0, 255)),
    ],
)
def test_modes_become_rgb(tmp_path, mode, value, expected):
    if mode == "P":
        img = Image.new("P", (20, 16), 1)
        img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 1 = blue
        img.info["transparency"] = 0
    else:
        img = Image.new(mode, (20, 16), value)
    path = tmp_path / ("a.jpg" if mode in ("L", "CMYK") else "a.png")
    img.save(path, quality=100) if path.suffix == ".jpg" else img.save(path)
    out = _crop(path)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), expected, atol=2)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 4000, 32).round().astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    out = _crop(tmp_path / "deep.png", size=32).astype(float)
    # resize_ratio 0.875: short side 37 -> centre crop 32 of a 37-px resize of the ramp
    want = np.asarray(
        Image.fromarray(np.round(ramp / 4000 * 255).astype(np.uint8)).resize(
            (32, 32),
            Image.Resampling.BILINEAR,
            box=(2 * 32 / 37, 2 * 32 / 37, 34 * 32 / 37, 34 * 32 / 37),
        ),
        float,
    )
    assert np.abs(out[..., 0] - want).max() <= 1
    assert out.max() > 200 and out.min() < 30  # a ramp, not a white image


def _bad_files(folder):
    """A truncated JPEG, a zero-byte file and a text file named .jpg."""
    good = folder / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(good)
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    return ["truncated.jpg", "empty.jpg", "text.jpg"]


def test_undecodable_files_name_themselves(tmp_path):
    for name in _bad_files(tmp_path):
        with pytest.raises(ImageDecodeError, match=name):
            _crop(tmp_path / name)


@pytest.fixture
def folder_with_bad_image(tmp_path):
    """image_folder root: 2 classes x 4 images, class 'a' file 1 truncated."""
    root = tmp_path / "root"
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(4):
                arr = rng.integers(0, 255, (20, 24, 3), np.uint8)
                Image.fromarray(arr).save(d / f"{k}.jpg")
    for split in ("train", "test"):
        path = root / split / "a" / "1.jpg"
        path.write_bytes(path.read_bytes()[:100])
    return root


def _batches(source, skip_bad, steps=1):
    loader = make_train_loader(
        source,
        global_batch_size=8,
        views=[ViewSpec("v", 8)],
        seed=0,
        num_workers=0,
        num_epochs=steps,
        skip_bad=skip_bad,
    )
    return list(loader)


def test_training_stops_naming_the_file_or_replaces_it(folder_with_bad_image):
    source = ImageFolderSource(folder_with_bad_image, "train")
    with pytest.raises(ImageDecodeError, match=r"a/1\.jpg.*skip_bad"):
        _batches(source, skip_bad=False)
    (batch,) = _batches(source, skip_bad=True)
    assert len(batch["bad_images"]) == 1 and "a/1.jpg" in batch["bad_images"][0]
    # The bad record (index 1) is replaced by the next one (index 2), in its slot.
    assert 1 not in batch["index"] and sorted(batch["index"]).count(2) == 2
    np.testing.assert_array_equal(batch["label"], source.labels[batch["index"]])
    (again,) = _batches(source, skip_bad=True)
    np.testing.assert_array_equal(again["views"]["v"], batch["views"]["v"])


def test_evaluation_blacks_out_a_bad_image_and_keeps_the_row(folder_with_bad_image):
    source = ImageFolderSource(folder_with_bad_image, "test")
    with pytest.raises(ImageDecodeError, match=r"a/1\.jpg"):
        list(make_eval_loader(source, batch_size=8, image_size=8))
    (batch,) = list(make_eval_loader(source, batch_size=8, image_size=8, skip_bad=True))
    assert batch["mask"].all() and list(batch["index"]) == list(range(8))
    assert (batch["images"][1] == 0).all() and batch["images"][2].any()
    assert len(batch["bad_images"]) == 1


def test_a_training_run_with_skip_bad_finishes(folder_with_bad_image, tmp_path):
    from fgjax.train.loop import train_and_evaluate

    c = tiny_config("supervised")
    c.data.kind, c.data.root, c.data.skip_bad = "image_folder", str(folder_with_bad_image), True
    c.train.num_epochs = 2
    workdir = str(tmp_path / "run")
    result = train_and_evaluate(c, workdir)
    assert result["finished"] and "eval" in result
    with open(os.path.join(workdir, "bad_images.txt")) as f:
        listed = f.read().splitlines()
    assert len(listed) == 1 and "a/1.jpg" in listed[0]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        last = json.loads(f.read().splitlines()[-1])
    assert last["bad_images"] >= 1

    # The numbers were not of the replaced image: eval.json names it (it was only printed),
    # also when the evaluation command reads its features back from the cache.
    def replaced(path):
        with open(path) as f:
            return json.load(f)["replaced_images"]

    test = replaced(os.path.join(workdir, "eval.json"))["test"]
    assert len(test) == 1 and "a/1.jpg" in test[0]
    from fgjax.cli.eval import main as evaluate_main

    for _ in range(2):  # extracted, then loaded from the cache
        evaluate_main(["--workdir", workdir, "--protocol", "retrieval", "--no-plots"])
        command = replaced(os.path.join(workdir, "eval", "eval.json"))
        assert command == {"test": test}
