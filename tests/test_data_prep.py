"""data_prep/ scripts on the official CUB sample in ../shared/data: CUB -> image folder
(LCR/LEAD++), CUB -> CFGA's JSON lists, image folder -> fgjax CSV, and the round trip.
The Cars and Aircraft scripts share the tested code (data_prep/common.py,
fgjax.data.export) and are run here only for --help (no official sample layouts)."""

import collections
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, data_config, index_table
from PIL import Image

from data_prep import cfga_lists, cub_to_image_folder, image_folder_to_csv
from fgjax.data.datasets import build_source
from fgjax.data.export import folder_name
from fgjax.data.sources import CsvManifestSource, ImageFolderSource


@pytest.fixture(scope="module")
def index(cub_root):
    """{image path under images/: (class name, is_train, box)} from the index files."""
    base = os.path.join(cub_root, "CUB_200_2011")
    t = {
        n: index_table(os.path.join(base, n))
        for n in (
            "images.txt",
            "image_class_labels.txt",
            "train_test_split.txt",
            "classes.txt",
            "bounding_boxes.txt",
        )
    }
    return {
        t["images.txt"][i].strip(): (
            t["classes.txt"][t["image_class_labels.txt"][i].strip()].strip(),
            t["train_test_split.txt"][i].strip() == "1",
            [float(v) for v in t["bounding_boxes.txt"][i].split()],
        )
        for i in t["images.txt"]
    }


def _tree(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_cub_to_image_folder_layout(tmp_path, cub_root, index):
    written = cub_to_image_folder.main(
        ["--root", cub_root, "--out", str(tmp_path / "CUB200"), "--link", "soft"]
    )
    want = sorted(
        f"{'train' if train else 'test'}/{name}/{os.path.basename(p)}"
        for p, (name, train, _) in index.items()
    )
    assert _tree(tmp_path / "CUB200") == want and written == {"train": 101, "test": 101}
    link = tmp_path / "CUB200" / want[0]
    assert os.path.islink(link) and os.path.samefile(
        link, os.path.join(cub_root, "CUB_200_2011", "images", want[0].split("/", 1)[1])
    )


def test_cub_crop_to_box_writes_the_box(tmp_path, cub_root, index):
    cub_to_image_folder.main(["--root", cub_root, "--out", str(tmp_path), "--crop-to-box"])
    path, (name, train, (x, y, w, h)) = next(iter(index.items()))
    out = tmp_path / ("train" if train else "test") / name / os.path.basename(path)
    with Image.open(out) as im:
        assert im.size == (round(x + w) - round(x), round(y + h) - round(y))
        got = np.asarray(im.convert("RGB"), np.int16)
    with Image.open(os.path.join(cub_root, "CUB_200_2011", "images", path)) as im:
        ref = np.asarray(im.convert("RGB").crop((round(x), round(y), round(x + w), round(y + h))))
    assert np.abs(got - ref).mean() < 4  # JPEG quality 95


def test_cfga_lists_retrieval_halves(tmp_path, cub_root, index):
    cfga_lists.main(["--dataset", "cub", "--root", cub_root, "--out", str(tmp_path)])
    d = tmp_path / "CUB_200_2011"
    names = sorted({name for name, _, _ in index.values()})  # sample: classes 001-050
    lists = {
        k: json.loads((d / f"{k}.json").read_text())
        for k in ("train_paths", "train_labels", "test_paths", "test_labels")
    }
    # First half of the classes train, second half test, ids global, image-id order.
    in_order = list(index)  # images.txt order = image ids
    for prefix, side in (("train", lambda y: y < 25), ("test", lambda y: y >= 25)):
        want = [p for p in in_order if side(names.index(index[p][0]))]
        paths, labels = lists[f"{prefix}_paths"], lists[f"{prefix}_labels"]
        assert [
            os.path.relpath(p, os.path.join(cub_root, "CUB_200_2011", "images")) for p in paths
        ] == want
        assert labels == [int(index[p][0][:3]) - 1 for p in want]
        assert all(os.path.isabs(p) for p in paths)
    assert set(lists["train_labels"]) == set(range(25))
    assert set(lists["test_labels"]) == set(range(25, 50))


def test_round_trip_official_folder_csv(tmp_path, cub_root):
    folder = tmp_path / "CUB200"
    cub_to_image_folder.main(["--root", cub_root, "--out", str(folder), "--link", "hard"])
    csv_path = tmp_path / "cub.csv"
    rows = image_folder_to_csv.main(
        ["--root", str(folder), "--out", str(csv_path), "--coarse", "last_word"]
    )
    assert rows == 202
    for split in ("train", "test"):
        official = build_source(data_config("cub", cub_root), split)
        manifest = CsvManifestSource(str(csv_path), split=split)
        assert manifest.class_names == official.class_names
        by_file = {
            os.path.basename(p): y for p, y in zip(official.paths, official.labels, strict=True)
        }
        assert len(manifest) == len(official)
        for p, y in zip(manifest.paths, manifest.labels, strict=True):
            assert by_file[os.path.basename(p)] == y
        assert manifest.coarse_names == official.coarse_names
        np.testing.assert_array_equal(
            np.sort(manifest.coarse_labels), np.sort(official.coarse_labels)
        )
        # The same tree read directly as kind image_folder agrees too.
        tree = ImageFolderSource(str(folder), split)
        assert tree.class_names == official.class_names
        assert collections.Counter(tree.labels.tolist()) == collections.Counter(
            official.labels.tolist()
        )


def test_folder_names_and_collisions(tmp_path):
    assert folder_name(" F/A-18 ") == "FA-18"
    assert folder_name("Acura RL Sedan 2012") == "Acura RL Sedan 2012"
    with pytest.raises(ValueError, match="no usable folder name"):
        folder_name("/")
    from fgjax.data.export import export_image_folder
    from fgjax.data.sources import LabeledSource

    img = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(img)
    src = LabeledSource(
        dataset="t",
        split="s",
        labels=np.array([0, 1]),
        class_names=["F/A-18", "FA-18"],
        paths=[str(img), str(img)],
    )
    with pytest.raises(ValueError, match="both become folder 'FA-18'"):
        export_image_folder(src, str(tmp_path / "out"), show_progress=False)


SCRIPTS = [
    "cub_to_image_folder",
    "cars_to_image_folder",
    "aircraft_to_image_folder",
    "cfga_lists",
    "image_folder_to_csv",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, capsys):
    module = importlib.import_module(f"data_prep.{script}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--root" in out and "--out" in out and module.__doc__.split()[0] in out


def test_help_as_a_script():
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "data_prep", "cars_to_image_folder.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=""),
        cwd=os.path.dirname(REPO),
    )
    assert done.returncode == 0, done.stderr
    assert "cars_meta.mat" in done.stdout and "--crop-to-box" in done.stdout
