"""CFGA / SCDA / Pooling descriptors against the authors' own extraction code (issue #29).

fixtures/cfga_golden.npz comes from RUNNING mikiyukio/CFGA's `WACD_Resnet50_101_152.py`
(ImageNet pipeline, LCC mask), its no-LCC / Eq. 5 / Eq. 6 classes, `cfga_with_dmls.py`
(MS loss / CosFace / ArcFace models) and `WACD_proxy_anchor_trained.py` on a narrow ResNet
(fixtures/make_cfga_golden.py). ImageNet pipeline: fgjax's `describe_fn` sees the same
weights and the same PNG images through fgjax's own preprocessing (`resize_capped(256)`,
the 'imagenet' pipeline of `python -m fgjax.cli.describe`, pixel-equal to what the authors'
loader fed its network), the three images padded into ONE batch with `valid` as the CLI
pads uncropped images: one compile serves all of them. DML pipelines: fgjax's eval crops
against the authors' crops, then the descriptors and the model's embedding on the latter."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.data.decode import resize_center_crop
from fgjax.data.shape_buckets import resize_capped
from fgjax.methods.cfga.descriptors import describe_fn
from fgjax.methods.cfga.metric_learning import MetricNet
from fgjax.models import build_backbone
from fgjax.weights import resnet_variables_from_torch

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "cfga_golden.npz")
# fgjax descriptor -> the file the authors' script writes it to
SCRIPT_FILES = {
    **{f"cfga_4_{b}_{k}": f"layer4_{b}_conv{k}_weight.json" for b in (1, 2) for k in (1, 2, 3)},
    "cfga_plus": "layer4_conv2_weight.json",
    "scda": "scda_norm_max_avg.json",
    "scda_concat": "scda_max_avg_norm.json",
    "pooling": "embedding_max_avg.json",
}
ABLATIONS = {
    f"cfga_{v}_4_{b}_{k}": (v, f"layer4_{b}_conv{k}_weight.json")
    for v in ("eq5", "eq6")
    for b in (1, 2)
    for k in (1, 2, 3)
}
# float32 on both sides; every strict comparison (mask, selection) is at least a relative
# 1e-6 from its threshold (the generator draws images until it is), so only rounding of the
# forward / backward sums differs: unit vectors agree to a few 1e-7.
ATOL = 2e-6
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _load():
    with np.load(FIXTURE) as data:
        d = {k: data[k] for k in data.files}
    model = build_backbone(
        "resnet50", stage_sizes=tuple(int(s) for s in d["stage_sizes"]), width=int(d["width"])
    )
    target = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    sd = {k[3:]: v for k, v in d.items() if k.startswith("sd/")}
    variables, report = resnet_variables_from_torch(sd, target)
    assert report.ok, str(report)
    return d, model, variables


def _normalized(image: np.ndarray) -> np.ndarray:
    return ((image / 255.0 - MEAN) / STD).astype(np.float32)


def _padded(d):
    """fgjax's preprocessing of the images as one zero-padded NHWC batch, their sizes
    [N, 2]; each image the very pixels the authors' loader fed its network."""
    inputs = []
    for i in range(len(d["lcc_removed"])):
        image = resize_capped({"image": d[f"source/{i}"]}, max_short=256)
        np.testing.assert_array_equal(image, d[f"input/{i}"], err_msg=f"image {i}")
        inputs.append(_normalized(image))
    h, w = max(x.shape[0] for x in inputs), max(x.shape[1] for x in inputs)
    batch = np.zeros((len(inputs), h, w, 3), np.float32)
    for i, x in enumerate(inputs):
        batch[i, : x.shape[0], : x.shape[1]] = x
    return batch, np.array([x.shape[:2] for x in inputs], np.int32)


def test_descriptors_match_the_authors_code():
    d, model, variables = _load()
    images, valid = _padded(d)
    assert valid.tolist() == [[96, 128], [128, 128], [284, 256]]  # the last one resized
    assert d["lcc_removed"].max() > 0, "the largest component is never exercised"
    names = (*SCRIPT_FILES, *ABLATIONS)
    with_lcc = describe_fn(model, names, use_lcc=True)
    without = describe_fn(model, tuple(SCRIPT_FILES), use_lcc=False)
    both = jax.jit(lambda v, x, s: {"lcc": with_lcc(v, x, s), "nolcc": without(v, x, s)})
    got = jax.device_get(both(variables, images, valid))
    for variant in ("lcc", "nolcc"):
        for name, file in SCRIPT_FILES.items():
            np.testing.assert_allclose(
                got[variant][name],
                d[f"expected/{variant}/{file}"],
                rtol=0,
                atol=ATOL,
                err_msg=f"{variant} {name}",
            )
    for name, (variant, file) in ABLATIONS.items():
        want = d[f"expected/{variant}/{file}"]
        np.testing.assert_allclose(got["lcc"][name], want, rtol=0, atol=ATOL, err_msg=name)
    # The LCC changed the masked descriptors exactly where it dropped positions.
    for i, cut in enumerate(d["lcc_removed"]):
        same = np.allclose(got["lcc"]["scda"][i], got["nolcc"]["scda"][i], atol=1e-4)
        assert same == (cut == 0), i


def _crops(d, prefix: str, size: int) -> np.ndarray:
    """The authors' crops `<prefix>/input/<i>` of the DML images, normalised, after checking
    fgjax's eval crop of the same images against them. Same geometry (torchvision's truncated
    long side, rounded offsets), but fgjax resamples the crop box in one PIL resize where
    torchvision resizes the whole image and then crops: a few pixels differ by one level."""
    crops = []
    for i in range(len([k for k in d if k.startswith(f"{prefix}/input/")])):
        want = d[f"{prefix}/input/{i}"]
        record = {"image": d[f"dml/source/{i}"]}
        crop = resize_center_crop(record, image_size=size, resize_ratio=size / 256)
        off = np.abs(crop.astype(int) - want)
        assert off.max() <= 1 and np.mean(off > 0) < 0.005, (i, off.max(), np.mean(off > 0))
        crops.append(_normalized(want))
    return np.stack(crops)


@pytest.mark.parametrize(
    "prefix, size, pooling",
    [("dml", 227, "max"), ("proxy", 224, "avg_plus_max")],
    ids=["ms_loss_cosface_arcface", "proxy_anchor"],
)
def test_dml_pipelines_match_the_authors_code(prefix, size, pooling):
    """`cfga_with_dmls.py` (MS loss / CosFace / ArcFace models: Resize(256) + CenterCrop(227),
    GMP) and `WACD_proxy_anchor_trained.py` (Proxy-Anchor: CenterCrop(224), GAP + GMP)
    against fgjax's eval crop ('ms_loss' / 'proxy_anchor' pipelines of `python -m
    fgjax.cli.describe`); on the authors' crops, the descriptors without LCC and the model's own
    embedding (the metric-learning methods' `MetricNet`)."""
    d, model, variables = _load()
    crops = _crops(d, prefix, size)
    head = {
        k.split("/")[-1].split(".")[-1]: v for k, v in d.items() if k.startswith(f"{prefix}/head/")
    }
    net = MetricNet(backbone=model, pooling=pooling, embedding_dim=head["bias"].size)
    params = {
        "backbone": variables["params"],
        "embedding": {"kernel": head["weight"].T, "bias": head["bias"]},
    }
    state = {"batch_stats": {"backbone": variables["batch_stats"]}}
    # the script's files; its 'embedding_max_avg.json' is the model's embedding, not `pooling`
    files = {**SCRIPT_FILES, "embedding": "embedding_max_avg.json"}
    files = {n: f for n, f in files.items() if n != "pooling" and f"{prefix}/expected/{f}" in d}
    assert len(files) == len([k for k in d if k.startswith(f"{prefix}/expected/")])
    describe = describe_fn(model, [n for n in files if n != "embedding"], use_lcc=False)

    @jax.jit
    def run(x):
        out = describe(variables, x)
        out["embedding"] = net.apply({"params": params, **state}, x, train=False)["embedding"]
        return out

    got = jax.device_get(run(crops))
    for name, file in files.items():
        want = d[f"{prefix}/expected/{file}"]
        np.testing.assert_allclose(got[name], want, rtol=0, atol=ATOL, err_msg=f"{prefix} {name}")
