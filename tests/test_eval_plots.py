"""Evaluation pictures: the retrieval grid's frames match correctness, PCA equals
scikit-learn's, the Recall@K curve reads eval.json files (and `fgjax.cli.plot --recall`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fgjax.cli.plot import main as plot_main
from fgjax.eval.figures import (
    GREEN,
    GREY,
    RED,
    compose_grid,
    embedding_map,
    pca_2d,
    recall_curve,
    recall_points,
    retrieval_grid,
)


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _count(image: np.ndarray, color, tol: int = 40) -> int:
    return int((np.abs(image - np.array(color)).max(axis=-1) <= tol).sum())


def _case():
    """2 queries x 3 results of distinct flat colours, correctness [[T, F, F], [T, T, F]]."""
    s = 12
    images = np.zeros((2, 4, s, s, 3), np.uint8)
    images[..., 2] = 200  # blue: not confusable with any frame colour
    correct = np.array([[True, False, False], [True, True, False]])
    return images, correct


def test_grid_frames_are_green_when_correct_red_when_wrong_grey_for_queries():
    images, correct = _case()
    border = 3
    canvas, origins = compose_grid(images, correct, border=border)
    cell = images.shape[2] + 2 * border
    for r in range(2):
        for c in range(4):
            y, x = origins[r, c]
            want = GREY if c == 0 else (GREEN if correct[r, c - 1] else RED)
            patch = canvas[y : y + cell, x : x + cell]
            frame = np.ones((cell, cell), bool)
            frame[border:-border, border:-border] = False
            assert (patch[frame] == want).all(), (r, c)
            np.testing.assert_array_equal(patch[~frame].reshape(images.shape[2:]), images[r, c])
    # Cells do not overlap and sit on the canvas.
    assert (origins[:, 1:, 1] - origins[:, :-1, 1] >= cell).all()
    assert origins[:, :, 0].max() + cell <= canvas.shape[0]
    with pytest.raises(ValueError, match="correct must be"):
        compose_grid(images, correct[:, :2])


def test_retrieval_grid_png_has_one_frame_colour_per_result(tmp_path):
    images, correct = _case()
    labels = [["q0", "a", "b", "c"], ["q1", "d", "e", "f"]]
    path = retrieval_grid(str(tmp_path / "grid.png"), images, correct, labels, min_side=48)
    png = _png(path)
    assert png.shape[0] > 100 and png.shape[1] > 200 and png.std() > 20
    green, red, grey = _count(png, GREEN), _count(png, RED), _count(png, GREY)
    # Three correct and three wrong results: as many green frame pixels as red ones.
    assert green > 0 and abs(green - red) / green < 0.05
    assert abs(grey - 2 * green / 3) / grey < 0.1  # two query frames


def test_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) * np.array([5, 3, 1, 0.5, 0.2, 0.1]) + 2
    points, explained = pca_2d(x)
    ref = PCA(n_components=2).fit(x)
    want = ref.transform(x)
    for axis in range(2):  # equal up to the sign of each axis
        sign = np.sign(want[np.abs(want[:, axis]).argmax(), axis])
        np.testing.assert_allclose(points[:, axis], sign * want[:, axis], atol=1e-9)
        assert points[np.abs(points[:, axis]).argmax(), axis] > 0
    np.testing.assert_allclose(explained, ref.explained_variance_ratio_, rtol=1e-9)


def test_embedding_map_png(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 10)
    feats = rng.normal(size=(40, 8)) + 3 * np.eye(8)[labels]
    path = embedding_map(str(tmp_path / "map.png"), feats, labels, ["a", "b", "c", "d"])
    png = _png(path)
    assert png.shape[0] > 300 and png.shape[1] > 300 and png.std() > 10


def test_recall_curve_reads_eval_json_of_several_runs(tmp_path):
    a = {"step": 10, "retrieval_recall@4": 0.8, "retrieval_recall@1": 0.5, "knn_top1": 0.4}
    assert recall_points(a) == ([1, 4], [0.5, 0.8])
    assert recall_points({"recall@2": 0.7, "retrieval_map": 0.3}) == ([2], [0.7])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "eval.json").write_text(json.dumps(a))
    (tmp_path / "b" / "eval").mkdir(parents=True)  # python -m fgjax.eval's folder
    b = {"retrieval_recall@1": 0.6, "retrieval_recall@2": 0.7, "retrieval_recall@4": 0.9}
    (tmp_path / "b" / "eval" / "eval.json").write_text(json.dumps(b))
    out = tmp_path / "recall.png"
    plot_main(["--recall", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    png = _png(out)
    assert png.shape[0] > 200 and png.shape[1] > 300 and png.std() > 10
    with pytest.raises(ValueError, match="no retrieval_recall@K entries in: \\['c'\\]"):
        recall_curve(str(out), {"a": a, "c": {"knn_top1": 0.5}})
    with pytest.raises(SystemExit, match="error: no eval.json"):  # one line, exit status 1
        plot_main(["--recall", str(tmp_path / "missing")])
