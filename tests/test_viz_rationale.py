"""`python -m fgjax.cli.rationale`: the picture of a trained tiny LCR run, and the errors."""

import json

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from fgjax.cli.rationale import main
from fgjax.eval.overlays import per_image_unit


def test_writes_image_gradcam_attention_rows_for_a_trained_lcr_run(tiny_lcr_run):
    workdir = tiny_lcr_run
    out = main(["--workdir", workdir, "--num", "3"])
    assert out == f"{workdir}/rationale.png"
    width, height = Image.open(out).size
    assert width == 750 and 750 < height < 800  # 3 rows of 2.5-inch panels at 100 dpi + title
    # Not a blank canvas: the overlays differ between the three columns.
    pixels = np.asarray(Image.open(out).convert("L"), np.float32)
    assert pixels.std() > 10


def test_a_run_without_a_rationale_branch_is_refused_by_name(tmp_path):
    config = tiny_config("moco")
    (tmp_path / "config.json").write_text(json.dumps(json.loads(config.to_json_best_effort())))
    with pytest.raises(SystemExit, match="error: .*method='moco'.*no rationale branch"):
        main(["--workdir", str(tmp_path)])
    with pytest.raises(ValueError, match="method='moco'.*no rationale branch"):  # traceback
        main(["--workdir", str(tmp_path), "--debug"])


def test_display_scaling_is_per_image_and_keeps_zero_maps():
    x = np.array([[[0.0, 2.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_allclose(per_image_unit(x), [[[0, 1], [0.5, 0.25]], [[0, 0], [0, 0]]])
