"""The colab/ notebooks: each committed .ipynb is the conversion of its percent-format .py
(colab/build_notebooks.py), and each runs top to bottom in a Jupyter kernel at tiny
settings on the CPU (FGJAX_TINY=1, its own working folder), its files and printed values
checked. One test per notebook, so pytest-xdist spreads them."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re

import nbformat
import numpy as np
import pytest
from conftest import REPO, shared_path
from nbclient import NotebookClient

COLAB = os.path.join(REPO, "colab")
NOTEBOOKS = ("01_quick_start", "02_lcr_cub", "03_evaluate", "04_weights")
PNG = b"\x89PNG\r\n\x1a\n"


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", f"{COLAB}/build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_equal_their_sources():
    build = _builder()
    names = [os.path.basename(p)[:-3] for p in build.sources()]
    assert names == list(NOTEBOOKS)
    setups = set()
    for name in NOTEBOOKS:
        source = os.path.join(COLAB, f"{name}.py")
        with open(os.path.join(COLAB, f"{name}.ipynb"), encoding="utf-8") as f:
            committed = f.read()
        assert committed == build.expected(source), (
            f"colab/{name}.ipynb differs from colab/{name}.py: run python colab/build_notebooks.py"
        )
        nb = nbformat.reads(committed, as_version=4)
        nbformat.validate(nb)
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs for c in nb.cells if c.cell_type == "code")
        setups.add(code[0])
        assert nb.metadata.accelerator == "TPU"
    # One setup cell, the same in every notebook: the switch, the install and the devices.
    assert len(setups) == 1
    (setup,) = setups
    assert 'TINY = TINY or os.environ.get("FGJAX_TINY") == "1"' in setup
    assert "PLACEHOLDER" in setup and "pip" in setup and "jax.devices()" in setup
    # The converter: markers, markdown comments and surrounding blank lines.
    text = "# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n\nprint(x)\n\n"
    want = [("markdown", "# Title\n\ntext"), ("code", "x = 1\n\n\nprint(x)")]
    assert build.parse_cells(text) == want
    with pytest.raises(ValueError, match="before the first"):
        build.parse_cells("x = 1\n# %%\n")


def _execute(name: str, folder, monkeypatch, **env: str) -> tuple[str, list[bytes]]:
    """Run colab/<name>.ipynb with cwd `folder`; returns its printed text and the PNGs it
    displayed. A failing cell raises nbclient's CellExecutionError with the traceback."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    settings = {"FGJAX_TINY": "1", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path, **env}
    for key, value in settings.items():
        monkeypatch.setenv(key, value)  # the kernel inherits the environment
    nb = nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.execute()
    text, pngs = [], []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                text.append(output.text)
            if "image/png" in output.get("data", {}):
                pngs.append(base64.b64decode(output.data["image/png"]))
    assert all(p.startswith(PNG) and len(p) > 5000 for p in pngs)
    text = "".join(text)
    assert "TINY = True" in text and "devices: [CpuDevice" in text
    return text, pngs


def _json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def _check_retrieval(results: dict, ks=(1, 2, 4, 8)) -> None:
    """Recall@K are fractions that never fall as K grows; mAP and kNN are fractions."""
    recalls = [results[f"retrieval_recall@{k}"] for k in ks]
    assert all(0 <= r <= 1 for r in recalls) and recalls == sorted(recalls)
    assert 0 < results["retrieval_map"] <= 1 and 0 <= results["knn_top1"] <= 1


def test_quick_start(tmp_path, monkeypatch):
    text, pngs = _execute("01_quick_start", tmp_path, monkeypatch)
    run = tmp_path / "runs" / "quick_start"
    saved = _json(run / "eval.json")
    assert saved["step"] == 4 and len(pngs) == 2  # the curves and Recall@K before/after
    _check_retrieval(saved)
    _check_retrieval(saved["initial"])
    # The printed table shows eval.json's numbers before and after training.
    for name in ("retrieval_recall@1", "retrieval_map", "knn_top1"):
        row = re.search(rf"^{re.escape(name)}\s+([\d.]+)\s+([\d.]+)$", text, re.M)
        assert row, name
        shown = [float(row.group(1)), float(row.group(2))]
        np.testing.assert_allclose(shown, [saved["initial"][name], saved[name]], atol=5e-5)
    steps = [json.loads(line)["step"] for line in open(run / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]
    assert pngs[0] == (run / "curves.png").read_bytes()
    assert pngs[1] == (run / "recall.png").read_bytes()


def test_lcr_on_cub(tmp_path, monkeypatch):
    root = shared_path("cub200_official_sample")
    text, pngs = _execute("02_lcr_cub", tmp_path, monkeypatch, FGJAX_CUB_ROOT=root)
    run = tmp_path / "runs" / "cub_lcr_tiny"
    saved = _json(run / "eval.json")
    assert saved["step"] == 2
    _check_retrieval(saved)
    config = _json(run / "config.json")
    assert config["method"] == "lcr" and config["data"]["root"] == root
    assert config["lcr"]["queue_size"] == 32 and config["model"]["init_from"] == ""
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2]
    assert all(0 < r["cam_entropy"] <= 1 + 1e-6 and r["lcr_loss"] >= 0 for r in records)
    shown = re.search(r"^retrieval_recall@1\s+([\d.]+)$", text, re.M)
    assert float(shown.group(1)) == pytest.approx(saved["retrieval_recall@1"], abs=5e-5)
    assert pngs == [(run / name).read_bytes() for name in ("curves.png", "rationale.png")]


def test_evaluate(tmp_path, monkeypatch):
    _, pngs = _execute("03_evaluate", tmp_path, monkeypatch)
    runs = tmp_path / "runs"
    checkpoint = _json(runs / "tiny_demo" / "eval" / "eval.json")
    weights = _json(runs / "eval_weights" / "eval.json")
    assert checkpoint["step"] == 2 and weights["weights"] == "runs/tiny_demo_backbone.pth"
    _check_retrieval(checkpoint)
    # The exported backbone is the checkpoint's: the same features, the same numbers.
    metrics = [k for k in checkpoint if k.startswith(("retrieval_", "knn_"))]
    assert len(metrics) >= 6
    for name in metrics:
        assert weights[name] == pytest.approx(checkpoint[name], abs=1e-6), name
    pictures = ("retrieval_grid.png", "recall_curve.png", "embedding_map.png")
    shown = [runs / "tiny_demo" / "eval" / p for p in pictures]
    shown += [runs / "eval_weights" / "retrieval_grid.png", runs / "recall_both.png"]
    assert pngs == [p.read_bytes() for p in shown]


def test_weights(tmp_path, monkeypatch):
    text, pngs = _execute("04_weights", tmp_path, monkeypatch)
    assert not pngs
    assert "round trip: max |difference| = 0.0" in text
    assert "exported vs trained: max |difference| = 0.0" in text
    assert "note: dropped head tensors (not backbone): fc.* (2)" in text
    runs = tmp_path / "runs"
    saved = _json(runs / "from_torch" / "eval.json")
    assert saved["step"] == 2
    _check_retrieval(saved)
    _check_retrieval(saved["initial"])
    config = _json(runs / "from_torch" / "config.json")
    assert config["model"]["init_from"] == "runs/tiny_resnet_torchvision.pth"
    # The exported file holds the backbone in torchvision's keys (no classifier), readable
    # by the zip reader torch.load uses: a zip archive with data.pkl inside.
    import zipfile

    with zipfile.ZipFile(runs / "fine_tuned.pth") as z:
        assert any(n.endswith("data.pkl") for n in z.namelist())
    from fgjax.weights import read_checkpoint

    original = read_checkpoint(runs / "tiny_resnet_torchvision.pth")
    exported = read_checkpoint(runs / "fine_tuned.pth")
    assert set(exported) == {k for k in original if not k.startswith("fc.")}
    assert all(exported[k].shape == original[k].shape for k in exported)
