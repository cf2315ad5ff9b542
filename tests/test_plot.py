"""`python -m fgjax.cli.plot WORKDIR` draws one panel per logged metric."""

import json

import numpy as np
from PIL import Image

from fgjax.cli.plot import main
from fgjax.train.metrics_log import MetricsWriter, read_metrics


def test_plot_writes_a_png_and_resumed_steps_keep_the_last_record(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    for step in range(1, 6):
        writer.write(step, {"loss": 1.0 / step, "lr": 0.1, "images_per_s": 100.0})
    writer.write(3, {"loss": 9.0, "lr": 0.1, "images_per_s": 100.0})  # a resumed run's repeat
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[2]["loss"] == 9.0
    (tmp_path / "eval.json").write_text(json.dumps({"retrieval_recall@1": 0.5}))

    main([str(tmp_path)])
    image = np.asarray(Image.open(tmp_path / "curves.png").convert("L"))
    assert image.shape[0] > 100 and image.shape[1] > 300
    assert image.std() > 5  # something was drawn, not a blank canvas


def test_epoch_hook_records_merge_with_step_records_and_lists_are_drawn(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    for step in range(1, 7):
        writer.write(step, {"loss": 1.0 / step})
    writer.write(3, {"epoch": 1.0, "buc/clusters": np.array([4, 3]), "buc/merges": 1})
    records = read_metrics(str(tmp_path))
    assert records[2] == {
        "step": 3,
        "loss": 1.0 / 3,
        "epoch": 1.0,
        "buc/clusters": [4.0, 3.0],
        "buc/merges": 1.0,
    }
    assert "buc/clusters" not in records[1]

    main([str(tmp_path)])
    image = np.asarray(Image.open(tmp_path / "curves.png").convert("L"))
    assert image.shape[1] > 600  # three panels: loss, buc/clusters, buc/merges
