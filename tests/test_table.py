"""`fgjax table`: the cells' configs under each preset, the summary's statistics against
numpy, the CUB-100 manifests against the index files, and one tiny table end to end
(its numbers against an independent computation, a rerun that skips, a lost result
redone from the checkpoint)."""

import csv
import json
import os

import numpy as np
import pytest
import scipy.stats
from conftest import REPO

from fgjax.bench import summary
from fgjax.bench.cub100 import write_manifest
from fgjax.bench.presets import (
    CELLS,
    PRESETS,
    Data,
    cell_config,
    eval_overrides,
    required_inputs,
)
from fgjax.cli.table import finished_results, table
from fgjax.config import load_config_file

CUB100 = os.path.join(REPO, "..", "shared", "data", "cub100_crops227")


def _fake(cell, seed, r1, nmi=0.5):
    return {
        "cell": cell,
        "seed": seed,
        "rows": {"embedding": {"retrieval_recall@1": r1, "clustering_nmi": nmi}},
    }


def test_every_cell_builds_under_the_cpu_preset_with_one_budget(tmp_path):
    preset = PRESETS["cpu"]
    data = Data(root="/d", manifest="/m.csv", zero_shot="/z.csv", num_classes=100)
    evaluations = []
    for cell in CELLS:
        c = cell_config(cell, preset, 3, data, str(tmp_path))
        assert (c.seed, c.data.image_size, c.model.init_from) == (3, 64, ""), cell.name
        assert c.train.num_epochs == preset.epochs and not c.eval.enabled, cell.name
        assert c.data.root == ("/z.csv" if cell.zero_shot else "/m.csv"), cell.name
        if c.model.arch == "resnet50":
            assert c.model.overrides.width == 8 and c.model.overrides.stage_sizes == (1, 1, 1, 3)
        evaluations.append(eval_overrides(cell, preset, data))
        if cell.name != "leadpp":  # nothing read but the data (LEAD++: its stand-ins)
            assert required_inputs(c) == [], cell.name
    assert all(e == evaluations[0] for e in evaluations)  # one evaluation for every row
    assert evaluations[0]["data.root"] == "/m.csv" and evaluations[0]["eval.recall_ks"] == (
        1,
        2,
        4,
        8,
    )
    methods = {cell_config(c, preset, 0, data, str(tmp_path)).method for c in CELLS}
    assert {
        "moco",
        "byol",
        "lcr",
        "leadpp",
        "bucsfr",
        "supervised",
        "herbs",
        "ms_loss",
        "cosface",
        "arcface",
        "proxy_anchor",
        "dgpcrl",
    } <= methods
    # LEAD++'s stand-in prototypes: one unit row per class, the head's width
    lead = cell_config(next(c for c in CELLS if c.name == "leadpp"), preset, 0, data, str(tmp_path))
    assert required_inputs(lead) == [lead.leadpp.prototypes]  # a random-init teacher
    protos = np.load(lead.leadpp.prototypes)
    assert protos.shape == (100, lead.leadpp.dim)
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, rtol=1e-5)


def test_the_gpu_preset_keeps_each_recipe_on_the_full_dataset(tmp_path):
    preset, data = PRESETS["gpu"], Data(root="/data/CUB_200_2011", weights="/w")
    for cell in CELLS:
        recipe = load_config_file(os.path.join(REPO, "configs", cell.recipe))
        c = cell_config(cell, preset, 0, data, str(tmp_path))
        assert c.data.root == "/data/CUB_200_2011" and c.data.kind == recipe.data.kind
        same = ("image_size", "train_split", "test_split")
        assert [c.data[f] for f in same] == [recipe.data[f] for f in same], cell.name
        assert c.model.arch == recipe.model.arch
        assert c.train.num_epochs == recipe.train.num_epochs, cell.name
        # every backbone (the untrained row's too) from the ImageNet weights of its paper
        imagenet = "swin_large_patch4_window12_384_22k" if cell.name == "herbs" else "resnet50"
        assert c.model.init_from.startswith(f"/w/{imagenet}"), cell.name
        if recipe.model.init_from:  # the recipes that name their file: the same file
            assert c.model.init_from == f"/w/{recipe.model.init_from}", cell.name
        if cell.name == "leadpp":
            assert (c.leadpp.teacher_weights, c.leadpp.prototypes) == (
                f"/w/{recipe.leadpp.teacher_weights}",
                f"/w/{recipe.leadpp.prototypes}",
            )
            crops = Data(root="/d", weights="/w", ddt_crops="/crops")
            moved = cell_config(cell, preset, 0, crops, str(tmp_path))
            for name, view in recipe.views.items():  # only the views that read crops
                assert moved.views[name].root == ("/crops" if view.root else ""), name
        splits = eval_overrides(cell, preset, data)
        assert (splits["data.train_split"], splits["data.test_split"]) == ("train", "test")


def test_summary_statistics_against_numpy(tmp_path):
    r1 = {"moco": [0.30, 0.34, 0.29], "lcr": [0.35, 0.38, 0.33]}
    results = [_fake(c, s, v) for c, values in r1.items() for s, v in enumerate(values)]
    rows = summary.rows_of(results)
    assert rows[("lcr", "embedding")]["retrieval_recall@1"] == r1["lcr"]
    mean, std = summary.mean_std(r1["lcr"])
    assert (mean, std) == pytest.approx((np.mean(r1["lcr"]), np.std(r1["lcr"], ddof=1)))
    cells = [c for c in CELLS if c.name in ("moco", "lcr")]
    text = summary.markdown_table(results, cells)
    assert f"| {100 * mean:.1f} +- {100 * std:.1f} |" in text
    diff = np.subtract(r1["lcr"], r1["moco"])
    ttest = scipy.stats.ttest_rel(r1["lcr"], r1["moco"])
    found = summary.paired_differences(results, ("moco", "embedding"), "retrieval_recall@1")
    assert found[("lcr", "embedding")] == pytest.approx(
        (diff.mean(), diff.std(ddof=1), 3, ttest.pvalue)
    )
    paired = summary.paired_table(results, ("moco", "embedding"), "retrieval_recall@1", "R@1")
    assert (
        f"| lcr / the method's embedding | +4.3 | 0.6 | 3 | {ttest.pvalue:.3f} | better |" in paired
    )
    results[3]["rows"]["embedding"]["retrieval_recall@1"] = 0.25  # lcr seed 0 now worse
    p = scipy.stats.ttest_rel([0.25, *r1["lcr"][1:]], r1["moco"]).pvalue
    paired = summary.paired_table(results, ("moco", "embedding"), "retrieval_recall@1", "R@1")
    assert f"| +1.0 | 5.2 | 3 | {p:.3f} | within seed noise |" in paired
    path = summary.write_csv(str(tmp_path / "t.csv"), results)
    got = {(r["cell"], r["metric"]): r for r in csv.DictReader(open(path))}
    assert float(got[("moco", "retrieval_recall@1")]["std"]) == pytest.approx(
        np.std(r1["moco"], ddof=1), abs=1e-6
    )
    assert os.path.getsize(summary.draw_figure(str(tmp_path / "t.png"), results, cells)) > 0


@pytest.mark.skipif(not os.path.isdir(CUB100), reason="../shared/data/cub100_crops227 absent")
def test_cub100_manifests_follow_the_index_files(tmp_path):
    rows = list(csv.DictReader(open(write_manifest(CUB100, str(tmp_path / "m.csv"), True))))
    splits = [r["split"] for r in rows]
    assert (splits.count("train"), splits.count("test")) == (2999, 2903)
    assert all(r["coarse_label"] == r["label"].split("_")[-1] for r in rows)
    zs = list(
        csv.DictReader(open(write_manifest(CUB100, str(tmp_path / "z.csv"), True, seen_classes=50)))
    )
    ids = {
        line.split(", ")[1]
        for line in open(os.path.join(CUB100, "classes.txt"))
        if int(line.split(", ")[0]) < 50
    }
    seen = {r["label"] for r in zs if r["split"] == "train"}
    assert seen == {i.strip() for i in ids}
    assert [r["split"] for r in zs].count("test") == 2903


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("table"))
    argv = ["--preset", "tiny", "--out", out, "--cells", "untrained,moco", "--seeds", "0"]
    return out, argv, table(argv)["results"]


def test_tiny_table_rows_and_outputs(tiny_table):
    out, _, results = tiny_table
    assert [(r["cell"], r["seed"]) for r in results] == [("untrained", 0), ("moco", 0)]
    moco = results[1]
    assert set(moco["rows"]) == {"embedding", "gap", "scda", "cfga_plus"}
    # MoCo's embedding is the backbone's GAP: the two rows are one feature
    assert moco["rows"]["embedding"] == moco["rows"]["gap"]
    assert moco["steps"] == 2 * (480 // 64) and results[0]["steps"] == 0
    for name in ("table.md", "table.csv", "table.png", "table_recall1.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    text = open(os.path.join(out, "table.md")).read()
    assert f"fgjax table --preset tiny --out {out} --cells moco --seeds 0" in text


def test_tiny_table_numbers_against_numpy(tiny_table):
    """Recall@1 of the trained MoCo row from features extracted through the public run
    API and ranked with numpy (cosine, leave-one-out)."""
    from fgjax.bench.presets import PRESETS, Data, cell_config, eval_config
    from fgjax.train.evaluation import load_weights
    from fgjax.train.run import Run, feature_embed

    out, _, results = tiny_table
    cell = next(c for c in CELLS if c.name == "moco")
    config = cell_config(cell, PRESETS["tiny"], 0, Data(root=""), out)
    run = Run(eval_config(config, cell, PRESETS["tiny"], Data(root="")))
    state, _ = load_weights(run, 0, None, os.path.join(out, "moco", "seed0"))
    test = run.extractor.extract("test", feature_embed(run.method, "pooled"), state)
    x = test.features / np.linalg.norm(test.features, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    recall1 = np.mean(test.labels[np.argmax(sims, axis=1)] == test.labels)
    got = results[1]["rows"]["embedding"]["retrieval_recall@1"]
    assert got == pytest.approx(recall1, abs=1e-6)


def test_tiny_table_rerun_skips_and_redoes_a_lost_result(tiny_table):
    out, argv, results = tiny_table
    moco = os.path.join(out, "moco", "seed0", "table.json")
    untrained = os.path.join(out, "untrained", "seed0", "table.json")
    before = os.stat(untrained).st_mtime_ns
    os.remove(moco)  # as if killed after training, before its evaluation was written
    again = table(argv)["results"]
    assert os.stat(untrained).st_mtime_ns == before  # finished: skipped
    redone = json.load(open(moco))
    assert redone["rows"] == results[1]["rows"]  # the checkpoint, evaluated again alike
    assert redone["train_seconds"] < 30  # resumed at its last step: nothing trained again
    assert finished_results(out) == again


def test_the_gap_row_reads_the_backbone_not_the_methods_embedding(tmp_path):
    """LCR's embedding is not its backbone's GAP (MoCo's is, so the tiny table cannot tell
    them apart): the "gap" row must be the average-pooled stage-4 map of LCR's own network."""
    from fgjax.train.run import Run, backbone_embed, feature_embed
    from fgjax.train.state import create_train_state

    cell = next(c for c in CELLS if c.name == "lcr")
    run = Run(cell_config(cell, PRESETS["tiny"], 0, Data(root=""), str(tmp_path)))
    state = create_train_state(run.method, None, run.image_shape, 0)
    images = np.random.default_rng(0).normal(size=(4, *run.image_shape[1:])).astype(np.float32)
    gap = np.asarray(backbone_embed(run.method, "stage4")(state, images))
    stage4 = np.asarray(feature_embed(run.method, "stage4")(state, images))
    own = np.asarray(feature_embed(run.method, "pooled")(state, images))
    np.testing.assert_allclose(gap, stage4, rtol=1e-5, atol=1e-6)
    assert gap.shape == own.shape and np.abs(gap - own).max() > 0.1


def test_the_untrained_row_starts_from_the_presets_pretrained_weights(tiny_table, monkeypatch):
    """The GPU preset's untrained row is the ImageNet backbone itself: `run_cell` loads
    `config.model.init_from` into the network it does not train. Given the tiny MoCo
    cell's workdir as that file, its rows are the trained MoCo rows."""
    import fgjax.cli.table as table_module
    from fgjax.bench.presets import PRESETS, Data

    out, _, results = tiny_table
    moco = os.path.join(out, "moco", "seed0")
    real = table_module.cell_config

    def from_moco(*args, **kwargs):
        c = real(*args, **kwargs)
        c.model.init_from = moco
        return c

    monkeypatch.setattr(table_module, "cell_config", from_moco)
    cell = next(c for c in CELLS if c.name == "untrained")
    loaded = table_module.run_cell(cell, PRESETS["tiny"], 0, Data(root=""), out + "_init")
    assert loaded["rows"] == results[1]["rows"] != results[0]["rows"]


def test_the_gpu_preset_names_every_missing_file_before_training(tmp_path, monkeypatch):
    (tmp_path / "CUB_200_2011").mkdir()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "resnet50-19c8e357.pth").write_bytes(b"")
    argv = ["--preset", "gpu", "--data", str(tmp_path / "CUB_200_2011"), "--out"]
    argv += [str(tmp_path / "t"), "--weights", str(tmp_path / "weights"), "--cells"]
    with pytest.raises(FileNotFoundError) as err:
        table([*argv, "untrained,herbs,leadpp"])
    text = str(err.value)
    assert "swin_large_patch4_window12_384_22k.pth" in text and "ViT-B-16.pt" in text
    assert "cub_ddt_crops" in text  # LEAD++'s views 3 and 4
    assert "resnet50-19c8e357.pth" not in text and not os.path.exists(tmp_path / "t" / "herbs")
    # an install without the herbs package skips its cell and does not ask for its weights
    import fgjax.cli.table as table_module

    monkeypatch.setattr(table_module, "has_method_package", lambda name: name != "herbs")
    with pytest.raises(FileNotFoundError) as err:
        table([*argv, "untrained,herbs,leadpp"])
    assert "ViT-B-16.pt" in str(err.value) and "swin_large" not in str(err.value)


def test_the_docs_gpu_budget_is_the_recipes_arithmetic(tmp_path):
    """docs/benchmarks.md's GPU budget per cell (epochs, batch, steps, images seen) against
    each cell's config: CUB-200's 5,994 train images, 5,864 in the zero-shot half."""
    from fgjax.data.train_loader import steps_per_epoch

    text = open(os.path.join(REPO, "docs", "benchmarks.md")).read()
    header = "| cells | px | epochs | batch | steps | images seen |"
    table_rows = text[text.index(header) :].split("\n\n")[0].strip().splitlines()[2:]
    documented = {}
    for line in table_rows:
        names, px, epochs, batch, steps, seen = (f.strip() for f in line.strip(" |").split("|"))
        for name in names.split(", "):
            fields = (px, epochs, batch, steps, seen)  # "42 (3,000 steps)" -> 42; "" -> 0
            documented[name] = [int((f or "0").split()[0].replace(",", "")) for f in fields]
    assert set(documented) == {c.name for c in CELLS}
    data = Data(root="/d", weights="/w")
    for cell in CELLS:
        c = cell_config(cell, PRESETS["gpu"], 0, data, str(tmp_path))
        images = 5864 if cell.zero_shot else 5994
        epochs = c.train.num_epochs if cell.trained else 0
        steps = epochs * steps_per_epoch(images, c.train.batch_size, c.train.keep_last_batch)
        steps = min(steps, c.train.max_steps or steps)
        seen = epochs * images if c.train.keep_last_batch else steps * c.train.batch_size
        batch = c.train.batch_size if cell.trained else 0
        assert documented[cell.name] == [c.data.image_size, epochs, batch, steps, seen], cell.name


def test_images_seen_counts_a_kept_partial_batch_by_its_images():
    """The CPU preset's budgets: MoCo drops the partial batch (4 x 46 steps of 64), HERBS
    keeps it (4 x 94 steps of 32 over 2,999 images: the last batch of each epoch 23)."""
    from types import SimpleNamespace

    from fgjax.cli.table import images_seen

    def run(batch, steps_per_epoch):
        info = SimpleNamespace(batch_size=batch, num_train_examples=2999)
        return SimpleNamespace(info=info, steps_per_epoch=steps_per_epoch)

    assert images_seen(run(64, 46), False, 184) == 184 * 64
    assert images_seen(run(32, 94), True, 376) == 4 * 2999
    assert images_seen(run(32, 94), True, 380) == 4 * 2999 + 4 * 32  # into a fifth epoch


def test_each_printed_command_reruns_its_cell_with_the_same_inputs(capsys):
    argv = ["--preset", "gpu", "--data", "/d/CUB_200_2011", "--out", "/o", "--weights", "/w"]
    table([*argv, "--ddt-crops", "/c", "--cells", "leadpp,herbs", "--seeds", "2", "--list"])
    lines = capsys.readouterr().out.splitlines()
    common = "--preset gpu --out /o --data /d/CUB_200_2011 --weights /w --ddt-crops /c"
    assert [line.split(maxsplit=2)[2] for line in lines] == [
        f"fgjax table {common} --cells {cell} --seeds 2" for cell in ("leadpp", "herbs")
    ]
