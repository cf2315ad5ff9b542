"""`python -m fgjax.cli.describe` and its shape-bucketed loader.

The loader against PIL (each image its torchvision-style capped resize, every image once,
in source order, padding); the command end to end on a tiny image folder and a tiny
ResNet saved as a weights file: the npz (keys, dims, labels, paths, settings), the pooled
and SCDA descriptors against numpy/scipy on the network's stage-4 maps (so source order,
normalisation and the LCC switch are checked), retrieval.json against a brute-force numpy
Recall@K / MAP@R, the cache; a trained-run checkpoint with 'embedding' through a centre-crop
pipeline; usage errors; real CUB files through the loader."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import scipy.ndimage
from conftest import shared_path, tiny_config
from PIL import Image

import fgjax.cli.describe as describe_module
from fgjax.cli.describe import main
from fgjax.data.shape_buckets import make_shape_bucket_loader, plan_batches

TESTS = os.path.dirname(os.path.abspath(__file__))
QUIET = "--config.train.progress_bar=false"
WIDTH = 4  # stage-4 3x3 width w4 = 8 * WIDTH = 32, stage-4 channels C4 = 128


# ---------------------------------------------------------------- independent references
def capped(width: int, height: int, cap: int) -> tuple[int, int]:
    """CFGA's dataloader_test.py rule, written out: (W, H) after the shorter-side cap."""
    m = min(width, height)
    if m <= cap:
        return width, height
    return int(round(width * (cap / m))), int(round(height * (cap / m)))


def reference_image(path: str, cap: int) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    return np.asarray(img.resize(capped(*img.size, cap), Image.BILINEAR))


# Kept here, not numpy_refs.unit: a zero row stays zero and every other row is divided by
# its own norm however small (unit's eps floor would change rows with norm below eps).
def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1)


def pooled_reference(f: np.ndarray, lcc: bool) -> dict[str, np.ndarray]:
    """gap, pooling, scda, scda_concat of one stage-4 map `f` [h, w, C] (spec §6.2)."""
    a = f.sum(-1)
    mask = a > a.mean()
    if lcc:
        labels, n = scipy.ndimage.label(mask)  # 4-connectivity
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == 1 + int(np.argmax(sizes))  # ties: the first label in raster order
    g = f * mask[..., None]
    avg, top = g.sum((0, 1)) / mask.sum(), g.max((0, 1))
    return {
        "gap": _unit(f.mean((0, 1))),
        "pooling": _unit(np.concatenate([f.mean((0, 1)), f.max((0, 1))])),
        "scda": np.concatenate([_unit(avg), _unit(top)]),
        "scda_concat": _unit(np.concatenate([avg, top])),
    }


def brute_force(x: np.ndarray, labels: np.ndarray, ks, dot: bool) -> dict[str, float]:
    """Leave-one-out Recall@K and MAP@R, ties to the lower index (float64)."""
    x = x.astype(np.float64) if dot else _unit(x.astype(np.float64))
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :-1]
    match = labels[order] == labels[:, None]
    out = {f"recall@{k}": match[:, :k].any(1).mean() for k in ks}
    scores = []
    for row in match:
        r = row.sum()
        if r:
            hits = row[:r]
            scores.append(np.sum(np.cumsum(hits) / np.arange(1, r + 1) * hits) / r)
    out["map@r"] = np.mean(scores)
    return out


# ---------------------------------------------------------------- the loader
def test_bucket_loader_covers_every_image_once_in_source_order_as_pil_resizes(tmp_path):
    cap = 24
    sizes = [(61, 37), (37, 59), (20, 23), (61, 37), (45, 45), (61, 37), (37, 59), (16, 30)]
    rng = np.random.default_rng(0)
    records, want = [], []
    for i, (w, h) in enumerate(sizes):
        pixels = rng.integers(0, 256, (h, w, 3), np.uint8)
        if i % 2:  # files (PNG), and in-memory images
            path = str(tmp_path / f"{i}.png")
            Image.fromarray(pixels).save(path)
            records.append({"path": path, "label": i % 3, "coarse_label": -1, "index": i})
            want.append(reference_image(path, cap))
        else:
            records.append({"image": pixels, "label": i % 3, "coarse_label": -1, "index": i})
            want.append(
                np.asarray(Image.fromarray(pixels).resize(capped(w, h, cap), Image.BILINEAR))
            )
    # A JPEG that PIL could draft (DCT-scale) by 4: decoded in full, as the reference does.
    big = np.asarray(
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), np.uint8)).resize((200, 160))
    )
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    records.append({"path": str(tmp_path / "big.jpg"), "label": 0, "coarse_label": -1, "index": 8})
    want.append(reference_image(str(tmp_path / "big.jpg"), cap))
    # A box (crop_to_box): the box is the image.
    pixels = rng.integers(0, 256, (50, 70, 3), np.uint8)
    box = (10.0, 5.0, 40.0, 30.0)
    records.append({"image": pixels, "box": box, "label": 1, "coarse_label": -1, "index": 9})
    want.append(
        np.asarray(Image.fromarray(pixels).resize((32, 24), Image.BILINEAR, (10, 5, 50, 35)))
    )

    shapes = [w.shape[:2] for w in want]
    exact = make_shape_bucket_loader(records, batch_size=2, max_short=cap, pad_to=1)
    assert exact.shapes == {s: shapes.count(s) for s in dict.fromkeys(shapes)}
    assert (24, 40) in exact.shapes and (23, 20) in exact.shapes  # resized, and kept
    loader = make_shape_bucket_loader(records, batch_size=2, max_short=cap, pad_to=16)
    # Sides rounded up to multiples of 16, those up to the cap (24) to at most 24:
    # (24, 40) -> (24, 48), (38, 24) -> (48, 24), (23, 20) and (24, 24) -> (24, 24),
    # (30, 16) -> (32, 16), (24, 30) and (24, 32) -> (24, 32).
    buckets = {(24, 48): 3, (48, 24): 2, (24, 24): 2, (32, 16): 1, (24, 32): 2}
    assert loader.shapes == buckets and loader.num_sizes == exact.num_sizes == 7
    seen, batches = [], list(loader)
    assert len(batches) == len(loader) == sum(-(-n // 2) for n in buckets.values())
    for batch in batches:
        images, valid = batch["images"], batch["valid"]
        assert images.shape[0] == 2 and images.dtype == np.uint8
        assert valid.shape == (2, 2) and valid.dtype == np.int32
        for row, (i, keep) in enumerate(zip(batch["index"], batch["mask"], strict=True)):
            if not keep:  # padding: black, label/index -1, the whole image valid
                assert i == -1 and batch["label"][row] == -1 and not images[row].any()
                assert tuple(valid[row]) == images.shape[1:3]
                continue
            h, w = want[i].shape[:2]  # the image at the top left, zeros beyond
            assert tuple(valid[row]) == (h, w)
            np.testing.assert_array_equal(images[row, :h, :w], want[i], err_msg=f"image {i}")
            beyond = images[row].copy()
            beyond[:h, :w] = 0
            assert not beyond.any(), f"image {i}: non-zero padding"
            assert batch["label"][row] == records[i]["label"]
            seen.append(int(i))
    assert sorted(seen) == list(range(len(records)))
    assert sum(not b["mask"].all() for b in batches) == sum(n % 2 for n in loader.shapes.values())
    # Groups in order of first appearance, indices ascending within a group.
    assert plan_batches([(1, 1), (2, 2), (1, 1), (1, 1)], 2) == [
        ((1, 1), [0, 2]),
        ((1, 1), [3]),
        ((2, 2), [1]),
    ]


def test_real_cub_images_through_the_imagenet_pipeline():
    from fgjax.config import data_config
    from fgjax.data.datasets import build_source

    root = shared_path("cub200_official_sample")
    source = build_source(data_config("cub", root), "test")
    records = [source[i] for i in range(8)]
    loader = make_shape_bucket_loader(records, batch_size=4, max_short=256)
    got = {}
    for batch in loader:
        for row in np.flatnonzero(batch["mask"]):
            h, w = batch["valid"][row]
            got[int(batch["index"][row])] = batch["images"][row, :h, :w]
    assert sorted(got) == list(range(8))
    assert loader.num_sizes > 1  # real CUB images vary in shape
    for i, record in enumerate(records):
        want = reference_image(os.path.join(source.root, record["path"]), 256)
        assert min(want.shape[:2]) <= 256
        np.testing.assert_array_equal(got[i], want, err_msg=record["path"])
    # The whole sample split (headers only): 58 sizes share 7 padded batch shapes.
    split = make_shape_bucket_loader(source, batch_size=4, max_short=256)
    assert (split.num_sizes, len(split.shapes)) == (58, 7)


# ---------------------------------------------------------------- the command line
# Each describe call jits a new function that compiles to an earlier call's program.
pytestmark = pytest.mark.usefixtures("module_compilation_cache")


def _config(root: str):
    c = tiny_config("supervised")
    c.model.overrides.stage_sizes = (1, 1, 1, 3)
    c.model.overrides.width = WIDTH
    c.data.kind = "image_folder"
    c.data.root = root
    return c


RECIPE = (
    "import sys\nsys.path.insert(0, {tests!r})\nfrom test_describe import _config\n\n"
    "def get_config():\n    return _config({root!r})\n"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An image folder (3 classes x 3 images of three sizes after the cap: 4 x 384 x 256,
    4 x 256 x 384 and one 256 x 341, padded into the latter's batch shape), random
    weights of a width-4 ResNet (1, 1, 1, 3) in a .pth, a recipe, and one describe run."""
    from fgjax.models.factory import backbone_from_config
    from fgjax.weights import export_torch

    base = tmp_path_factory.mktemp("describe")
    root = base / "data"
    sizes = [(384, 256), (256, 384), (480, 320), (320, 480), (400, 300), (384, 256)]
    rng = np.random.default_rng(1)
    for i in range(9):
        w, h = sizes[i % len(sizes)]
        small = rng.integers(0, 256, (h // 32, w // 32, 3), np.uint8)  # smooth content
        image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        for split in ("train", "test"):
            folder = root / split / f"class{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i}.png")
    config = _config(str(root))
    backbone = backbone_from_config(config.model)
    shapes = jax.eval_shape(
        lambda x: backbone.init(jax.random.PRNGKey(0), x, train=False), np.zeros((1, 64, 64, 3))
    )

    def draw(path, leaf):  # random weights and BN statistics, drawn without compiling
        name = jax.tree_util.keystr(path)
        if "'var'" in name:
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        scale = 0.3 if "'kernel'" in name else 0.1
        return (rng.normal(size=leaf.shape) * scale).astype(np.float32) + ("'scale'" in name)

    donor = jax.tree_util.tree_map_with_path(draw, dict(shapes))
    weights = str(base / "backbone.pth")
    export_torch(weights, donor, "resnet")
    recipe = base / "recipe.py"
    recipe.write_text(RECIPE.format(tests=TESTS, root=str(root)))
    out = str(base / "out")
    argv = ["--init-from", weights, "--config", str(recipe), "--out", out, QUIET]
    payload = main([*argv, "--method", "cfga", "--method", "scda", "--batch-size", "2"])
    return dict(
        argv=argv, out=out, root=str(root), config=config, donor=donor, payload=payload, base=base
    )


def _stage4(config, donor, images: list[np.ndarray]) -> list[np.ndarray]:
    """The backbone's stage-4 maps of uint8 images, normalised as the recipe's view."""
    from fgjax.models.factory import backbone_from_config

    backbone = backbone_from_config(config.model)
    spec = config.views.view1.photometric
    apply = jax.jit(lambda v, x: backbone.apply(v, x, train=False)["stage4"])
    maps = {}
    for shape in dict.fromkeys(im.shape for im in images):  # one call per shape
        ids = [i for i, im in enumerate(images) if im.shape == shape]
        x = np.stack([images[i] for i in ids]).astype(np.float32) / 255
        x = (x - np.array(spec.mean)) / np.array(spec.std)
        maps.update(zip(ids, np.asarray(apply(donor, x.astype(np.float32))), strict=True))
    return [maps[i] for i in range(len(images))]


def test_command_line_writes_descriptors_and_retrieval(tiny, capsys):
    from fgjax.data.datasets import build_source

    out, config = tiny["out"], tiny["config"]
    path = os.path.join(out, "descriptors_test.npz")
    source = build_source(config.data, "test")
    report = json.loads(open(os.path.join(out, "retrieval.json")).read())
    assert report == json.loads(json.dumps(tiny["payload"]))
    assert report["num_images"] == 9 and report["split"] == "test"
    dims = {
        **{f"cfga_4_{b}_{k}": 128 if k == 1 else 32 for b in (1, 2) for k in (1, 2, 3)},
        "cfga_plus": 64,
        "scda": 256,
        "scda_concat": 256,
    }
    assert list(report["descriptors"]) == list(dims)

    # A second call reuses the npz, computing only the descriptors it lacks.
    calls = []
    real = describe_module.compute_descriptors

    def spy(run, state, names, *args, **kwargs):
        calls.append(list(names))
        return real(run, state, names, *args, **kwargs)

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(describe_module, "compute_descriptors", spy)
        main([*tiny["argv"], "--method", "scda,gap"])
        assert calls == [["gap", "pooling"]]
        again = main([*tiny["argv"], "--method", "scda_concat,cfga_plus"])
        assert calls == [["gap", "pooling"]]
        printed = capsys.readouterr().out
        assert "descriptors: loaded" in printed
        assert again["descriptors"]["cfga_plus"] == report["descriptors"]["cfga_plus"]
        line = next(x for x in printed.splitlines() if x.startswith("cfga_plus "))
        r1 = report["descriptors"]["cfga_plus"]["recall@1"]
        assert line.split()[1:3] == ["64", f"{100 * r1:.2f}"]  # dim, R@1 in percent
    with np.load(path) as data:
        saved = {k: data[k] for k in data.files}

    for name, dim in {**dims, "gap": 128, "pooling": 256}.items():
        assert saved[name].shape == (9, dim) and saved[name].dtype == np.float32, name
    np.testing.assert_array_equal(saved["labels"], source.labels)
    assert saved["labels"].dtype == np.int32
    assert list(saved["paths"]) == list(source.paths)
    assert str(saved["setting_pipeline"]) == "imagenet" and bool(saved["setting_lcc"])
    assert int(saved["setting_short"]) == 256 and int(saved["setting_crop"]) == 0
    # CFGA vectors are non-negative and unit (CFGA+: two unit halves), per the spec.
    for name in ("cfga_4_1_2", "cfga_4_2_3"):
        assert (saved[name] >= 0).all()
        np.testing.assert_allclose(np.linalg.norm(saved[name], axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(saved["cfga_plus"][:, :32], saved["cfga_4_1_2"])

    # Pooled / SCDA rows against numpy on the stage-4 maps of PIL-resized images (source
    # order, the cap, ImageNet normalisation, LCC on).
    images = [reference_image(os.path.join(source.root, p), 256) for p in source.paths]
    assert {im.shape for im in images} == {(256, 384, 3), (384, 256, 3), (256, 341, 3)}
    maps = _stage4(config, tiny["donor"], images)
    lcc_matters = False
    for i, f in enumerate(maps):
        want = pooled_reference(f, lcc=True)
        lcc_matters |= not np.allclose(want["scda"], pooled_reference(f, lcc=False)["scda"])
        for name, value in want.items():
            np.testing.assert_allclose(saved[name][i], value, atol=2e-5, err_msg=f"{name} {i}")
    assert lcc_matters  # the test sees whether the mask's largest component was kept

    # retrieval.json against brute force on the npz.
    for name, row in report["descriptors"].items():
        want = brute_force(saved[name], saved["labels"], (1, 2, 4, 8), dot=True)
        assert row["dim"] == dims[name] and row["metric"] == "dot"
        for metric, value in want.items():
            assert row[metric] == pytest.approx(value, abs=1e-6), (name, metric)

    # --no-cache recomputes what is asked, and only that.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(describe_module, "compute_descriptors", spy)
        main([*tiny["argv"], "--method", "gap", "--no-cache"])
    assert calls[-1] == ["gap", "pooling"]
    with np.load(path) as data:
        assert "scda" not in data.files
        np.testing.assert_allclose(data["gap"], saved["gap"], atol=1e-6)


def test_trained_run_embedding_through_a_centre_crop_pipeline(tiny):
    """A checkpoint (the tiny donor backbone and a zero head, written without training or
    compiling) described with 'embedding' and 'gap' through 'proxy_anchor' (Resize 256 +
    CenterCrop 224, no LCC): a supervised run's embedding is GAP, so its unit rows are the
    'gap' descriptor."""
    import orbax.checkpoint as ocp

    from fgjax.methods import replace_backbone
    from fgjax.train.run import Run
    from fgjax.train.state import create_train_state

    workdir = tiny["base"] / "run"
    config = tiny["config"]
    run = Run(config)
    abstract = jax.eval_shape(
        lambda: create_train_state(run.method, None, run.image_shape, config.seed)
    )
    state = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
    params, model_state = replace_backbone(state.params, state.model_state, tiny["donor"])
    state = state.replace(params=params, model_state=model_state)
    options = ocp.CheckpointManagerOptions(create=True)
    with ocp.CheckpointManager(str(workdir / "checkpoints"), options=options) as manager:
        manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        manager.wait_until_finished()
    (workdir / "config.json").write_text(config.to_json_best_effort())

    report = main(
        ["--workdir", str(workdir), "--method", "embedding,gap", "--pipeline", "proxy_anchor"]
        + [QUIET]
    )
    assert report["step"] == 3 and report["settings"]["crop"] == 224
    with np.load(str(workdir / "describe" / "descriptors_test.npz")) as data:
        assert not bool(data["setting_lcc"]) and data["embedding"].shape == (9, 128)
        np.testing.assert_allclose(_unit(data["embedding"]), data["gap"], atol=1e-5)
    rows = report["descriptors"]
    assert rows["embedding"]["metric"] == "cosine"
    assert rows["embedding"]["recall@1"] == rows["gap"]["recall@1"]

    # Usage errors, each naming what is wrong.
    argv = tiny["argv"]
    errors = {
        "unknown method 'cfgaa'": [*argv, "--method", "cfgaa"],
        "unknown pipeline 'vgg'": [*argv, "--pipeline", "vgg"],
        "'embedding' is a trained run's own embedding": [*argv, "--method", "embedding"],
        "split.*val": [*argv, "--split", "val"],
        "no checkpoints in": ["--workdir", str(tiny["base"] / "empty"), QUIET],
    }
    (tiny["base"] / "empty").mkdir()
    (tiny["base"] / "empty" / "config.json").write_text(config.to_json_best_effort())
    for message, bad in errors.items():
        with pytest.raises(SystemExit, match=message):
            main(bad)
