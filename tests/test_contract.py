"""The method contract carries what the five methods need (toy methods in toy_methods.py):
frozen inputs, four views from two roots, per-epoch host hooks with per-example state,
gradient accumulation on a BatchNorm-free Swin, the non-finite guard, checkpoint
fallback, evaluation every N epochs and evaluation-only runs."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import toy_methods
from conftest import jitted_step, normalized, random_batch, run_info, tiny_config
from PIL import Image

from fgjax.cli.eval import main as evaluate_main
from fgjax.config import default_config, load_config_file, photometric_config
from fgjax.core.sharding import global_batch
from fgjax.data.augment import no_augment_spec
from fgjax.train.loop import NonFiniteError, evaluation_epochs, train_and_evaluate
from fgjax.train.metrics_log import read_metrics
from fgjax.train.resume import ConfigChangedError


def _checkpoint(workdir, step=None) -> dict[str, np.ndarray]:
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = manager.latest_step() if step is None else step
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    leaves = jax.tree_util.tree_flatten_with_path(restored.state)[0]
    return {"step": step, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}}


def _assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _image_folder(root, colour_of, classes=4, per_class=6, size=20):
    """root/{train,test}/c<k>/<i>.png with solid colours `colour_of(class, i)`."""
    for split in ("train", "test"):
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                rgb = np.full((size, size + 4, 3), colour_of(k, i), np.uint8)
                rgb[::3] = 255 - rgb[::3]  # some structure for BatchNorm to see
                Image.fromarray(rgb).save(folder / f"{i}.png")


# ----------------------------------------------------------------- frozen + four views


def _teacher_config(tmp_path):
    main, ddt = tmp_path / "main", tmp_path / "ddt"
    _image_folder(main, lambda k, i: (40 * k, 10 * i, 100))
    _image_folder(ddt, lambda k, i: (200 - 40 * k, 100, 10 * i))
    teacher = tmp_path / "teacher.npz"
    np.savez(teacher, W=np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
    c = default_config("toy_teacher")
    c.model.overrides.stage_sizes, c.model.overrides.width = (1,), 4
    c.model.dtype = "float32"
    c.data.kind, c.data.root, c.data.image_size, c.data.num_workers = (
        "image_folder",
        str(main),
        16,
        0,
    )
    c.views.ddt1.root = c.views.ddt2.root = str(ddt)
    c.views.ddt2.size = 12  # views may differ in size
    c.toy_teacher.teacher_path = str(teacher)
    c.train.batch_size, c.train.num_epochs = 8, 2
    c.train.checkpoint_every_steps, c.train.log_every_steps = 2, 1
    c.train.progress_bar = False
    c.eval.enabled = False
    return c


def test_four_view_method_with_frozen_teacher_resumes_bit_identically(tmp_path):
    config = _teacher_config(tmp_path)
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    assert straight["finished"] and straight["step"] == 6  # 24 images / 8 x 2 epochs

    interrupted = config.copy_and_resolve_references()
    interrupted.train.max_steps = 3
    assert train_and_evaluate(interrupted, str(tmp_path / "resumed"))["step"] == 3
    saved = _checkpoint(tmp_path / "resumed")
    # The teacher [3, 4] is nowhere in the checkpoint: only params, state, optimiser.
    assert not any(v.shape == (3, 4) for v in saved.values() if hasattr(v, "shape"))
    assert all("teacher" not in name for name in saved)
    train_and_evaluate(config, str(tmp_path / "resumed"))  # resumes at step 3
    _assert_same_state(_checkpoint(tmp_path / "straight"), _checkpoint(tmp_path / "resumed"))


def test_frozen_teacher_is_read_by_the_step_and_never_updated(tmp_path):
    config = _teacher_config(tmp_path)
    run = run_info(config, num_classes=4)
    method, state, frozen, step, mesh = jitted_step(config, run)
    batch = random_batch(np.random.default_rng(0), method.view_names, 8, 16)
    batch["views"]["ddt2"] = batch["views"]["ddt2"][:, :12, :12]
    teacher = np.asarray(frozen["teacher"]).copy()
    _, metrics = step(state, frozen, global_batch(batch, mesh))
    np.testing.assert_array_equal(np.asarray(frozen["teacher"]), teacher)  # not donated
    # A different teacher changes the loss: the step reads it.
    method, state, _, step, mesh = jitted_step(config, run)
    other = jax.tree.map(lambda w: w * -1.0, frozen)
    _, other_metrics = step(state, other, global_batch(batch, mesh))
    assert float(metrics["loss"]) != pytest.approx(float(other_metrics["loss"]))


# ----------------------------------------------------------------- per-epoch host hook


def _cluster_config():
    c = tiny_config("toy_cluster")
    c.views.view1.photometric = photometric_config(no_augment_spec())  # known inputs
    c.toy_cluster.num_clusters = 3
    c.train.num_epochs = 3  # 16 train images / 8: 2 steps an epoch
    c.eval.enabled = True
    return c


def test_epoch_hook_targets_match_an_independent_clustering_and_feed_the_loss(tmp_path):
    config = _cluster_config()
    config.train.max_steps = 2  # the hook of epoch 0 ran; stop before epoch 1's
    result = train_and_evaluate(config, str(tmp_path))
    state = result["state"]
    # Recompute the epoch-0 clustering from the *initial* network independently.
    from fgjax.data.datasets import build_source
    from fgjax.data.eval_loader import make_eval_loader
    from fgjax.methods import build_method
    from fgjax.train.state import create_train_state

    source = build_source(config.data, "train")
    run = run_info(config, num_classes=source.num_classes, steps_per_epoch=2, num_epochs=3)
    method = build_method(config, run)
    initial = create_train_state(method, None, (2, 16, 16, 3), seed=config.seed)
    mean, std = np.array(config.views.view1.photometric.mean), config.views.view1.photometric.std
    feats = []
    for batch in make_eval_loader(source, batch_size=len(source), image_size=16):
        x = ((batch["images"] / 255.0 - mean) / np.array(std)).astype(np.float32)
        feats.append(np.asarray(method.embed(initial.params, initial.model_state, x)))
    expected = toy_methods.kmeans(np.concatenate(feats), 3, seed=0)
    np.testing.assert_array_equal(np.asarray(state.method_state["targets"]), expected)
    assert int(state.method_state["epochs_seen"]) == 1
    assert len(np.unique(expected)) > 1  # the test would notice wrong indexing

    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["clusters/largest_cluster"] == pytest.approx(np.bincount(expected).max() / 16)
    # The hook's metrics are logged at the epoch's first step, merged with step records.
    (record,) = [r for r in read_metrics(str(tmp_path)) if r["step"] == 0]
    assert record["cluster_sizes"] == np.bincount(expected, minlength=3).tolist()
    assert record["epoch"] == 0


def test_epoch_hook_loss_uses_the_targets_of_each_examples_index():
    config = _cluster_config()
    run = run_info(config, num_classes=4, steps_per_epoch=2)
    method, state, frozen, step, mesh = jitted_step(config, run)
    targets = np.arange(run.num_train_examples, dtype=np.int32) % 3
    state = state.replace(method_state={**state.method_state, "targets": targets})
    batch = random_batch(np.random.default_rng(1), method.view_names, 8, 16)
    batch["index"] = np.array([5, 0, 7, 2, 9, 14, 3, 11], np.int32)
    before = jax.device_get(state)
    _, metrics = step(state, frozen, global_batch(batch, mesh))
    spec = config.views.view1.photometric
    x = ((batch["views"]["view1"] / 255.0 - np.array(spec.mean)) / np.array(spec.std)).astype(
        np.float32
    )
    out, _ = method.net.apply(
        {"params": before.params, **before.model_state}, x, train=True, mutable=["batch_stats"]
    )
    logits = np.asarray(out["logits"], np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    expected = -np.mean(logp[np.arange(8), targets[batch["index"]]])
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)


@pytest.mark.parametrize("stop_at", [3, 4])  # mid-epoch, and at an epoch boundary
def test_epoch_hook_method_resumes_bit_identically(tmp_path, stop_at):
    config = _cluster_config()
    config.eval.enabled = False
    train_and_evaluate(config, str(tmp_path / "straight"))
    interrupted = config.copy_and_resolve_references()
    interrupted.train.max_steps = stop_at
    train_and_evaluate(interrupted, str(tmp_path / "resumed"))
    result = train_and_evaluate(config, str(tmp_path / "resumed"))
    assert int(result["state"].method_state["epochs_seen"]) == 3
    _assert_same_state(_checkpoint(tmp_path / "straight"), _checkpoint(tmp_path / "resumed"))


# ----------------------------------------------------------------- Swin + accumulation


def _swin_config(accumulate_steps: int, batch_size: int):
    c = tiny_config("supervised")
    c.model.arch = "swin_tiny_patch4_window7_224"
    c.model.overrides = dict(
        embed_dim=8, depths=(2, 1), num_heads=(1, 2), window_size=2, img_size=16
    )
    c.model.drop_path_rate = 0.0
    c.train.batch_size = batch_size
    c.train.accumulate_steps = accumulate_steps
    return c


def test_swin_gradient_accumulation_equals_the_full_batch_step():
    batch = random_batch(np.random.default_rng(2), ("view1",), 8, 16)
    results = []
    for accumulate in (1, 4):
        config = _swin_config(accumulate, 8)
        method, state, frozen, step, mesh = jitted_step(config, run_info(config), lambda s: 1e-2)
        assert state.model_state == {}  # no BatchNorm anywhere
        initial = jax.device_get(state.params)
        new_state, metrics = step(state, frozen, global_batch(batch, mesh))
        results.append((jax.device_get(new_state.params), float(metrics["loss"])))
    (full, full_loss), (accumulated, accumulated_loss) = results
    assert accumulated_loss == pytest.approx(full_loss, rel=1e-5)
    moved = 0
    for a, b, before in zip(
        jax.tree.leaves(full), jax.tree.leaves(accumulated), jax.tree.leaves(initial), strict=True
    ):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-6)
        moved += not np.allclose(a, before)
    assert moved > 10


def test_partial_last_batch_averages_its_micro_batches_as_herbs_does():
    """Spec 5.3's ragged group: an epoch's last batch of 5 with micro-batches of 2 makes
    {0, 2}, {1, 3} (strided, as full batches) and the remainder {4}; the update is the mean
    of the 3 micro-batch gradients (HERBS divides each loss by the group's size), checked
    against jax.grad of the loss of each micro-batch on its own (SGD, lr 0.1)."""
    from fgjax.methods.base import StepContext

    config = _swin_config(4, 8)
    config.views.view1.photometric = photometric_config(no_augment_spec())
    config.optim.update(momentum=0.0, weight_decay=0.0)
    run = run_info(config)
    method, state, frozen, step, mesh = jitted_step(config, run, lambda s: 0.1)
    batch = random_batch(np.random.default_rng(3), ("view1",), 5, 16)
    before = jax.device_get(state)
    after, metrics = step(state, frozen, global_batch(batch, mesh))
    x = normalized(batch["views"]["view1"], config.views.view1.photometric)
    ctx = StepContext(step=before.step, epoch=before.step / run.steps_per_epoch, run=run)

    @jax.jit
    def grad(views, fields):
        def loss(params):
            out = method.loss(params, {}, {}, frozen, views, fields, ctx, jax.random.key(0))
            return out[0]

        return jax.value_and_grad(loss)(before.params)

    parts = [
        grad({"view1": x[rows]}, {k: v[rows] for k, v in batch.items() if k != "views"})
        for rows in (np.array([0, 2]), np.array([1, 3]), np.array([4]))
    ]
    assert float(metrics["loss"]) == pytest.approx(np.mean([p[0] for p in parts]), rel=1e-5)
    want = jax.tree.map(lambda p, *g: p - 0.1 * sum(g) / 3, before.params, *(g for _, g in parts))
    for w, got in zip(jax.tree.leaves(want), jax.tree.leaves(after.params), strict=True):
        np.testing.assert_allclose(got, w, rtol=2e-4, atol=2e-6)
    # A plain mean over the 5 examples weighs the micro-batches 2/5, 2/5, 1/5, not 1/3 each.
    plain = jax.tree.map(lambda a, b, c: (2 * a + 2 * b + c) / 5, *(g for _, g in parts))
    concatenated = jax.tree.map(lambda p, g: p - 0.1 * g, before.params, plain)
    assert not all(
        np.allclose(a, b, rtol=2e-4, atol=2e-6)
        for a, b in zip(jax.tree.leaves(concatenated), jax.tree.leaves(after.params), strict=True)
    )


def test_swin_trains_and_evaluates_end_to_end_keeping_each_epochs_last_batch(tmp_path):
    import math

    from fgjax.train.optim import peak_lr

    config = _swin_config(3, 6)  # 16 training images: batches of 6, 6 and the last 4
    config.train.num_epochs = 1
    config.train.keep_last_batch = True
    config.optim.schedule_unit = "micro_batch"  # 8 micro-batches of 2 per epoch, not 3 x 3
    result = train_and_evaluate(config, str(tmp_path))
    assert result["finished"] and result["step"] == 3 and 0 <= result["eval"]["knn_top1"] <= 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == pytest.approx([1 / 3, 2 / 3, 1.0])
    peak, final = peak_lr(config.optim, 6), config.optim.final_lr
    cosine = [final + (peak - final) * 0.5 * (1 + math.cos(math.pi * m / 8)) for m in (2, 5, 7)]
    assert [r["lr"] for r in records] == pytest.approx(cosine, rel=1e-5)  # last micro-batches
    assert all(np.isfinite(r["loss"]) and r["skipped"] == 0 for r in records)


def test_keep_last_batch_is_refused_for_a_method_that_needs_full_batches(tmp_path):
    config = tiny_config("moco")
    config.train.keep_last_batch = True
    with pytest.raises(ValueError, match="keep_last_batch=True: method 'moco' needs full"):
        train_and_evaluate(config, str(tmp_path))


# ----------------------------------------------------------------- non-finite guard


def test_an_injected_nan_skips_the_update_and_is_counted():
    config = tiny_config("toy_nan")
    config.toy_nan.bad_steps = (0,)
    method, state, frozen, step, mesh = jitted_step(config, run_info(config))
    before = jax.device_get(state)
    batch = global_batch(random_batch(np.random.default_rng(3), method.view_names, 8, 16), mesh)
    state, metrics = step(state, frozen, batch)
    after = jax.device_get(state)
    for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        jax.tree.leaves(before.opt_state), jax.tree.leaves(after.opt_state), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert float(metrics["skipped"]) == 1.0 and int(after.bad_steps) == 1 and int(after.step) == 1
    state, metrics = step(state, frozen, batch)  # step 1 is finite again
    assert float(metrics["skipped"]) == 0.0 and int(state.bad_steps) == 0
    assert not np.allclose(
        jax.tree.leaves(jax.device_get(state.params))[0], jax.tree.leaves(before.params)[0]
    )


def test_non_finite_steps_in_a_row_stop_the_run_with_the_last_good_checkpoint(tmp_path):
    config = tiny_config("toy_nan")
    config.toy_nan.bad_steps = tuple(range(3, 100))
    config.train.num_epochs = 10
    config.train.max_bad_steps = 3
    with pytest.raises(NonFiniteError, match=r"3 non-finite steps in a row.*step 2"):
        train_and_evaluate(config, str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records[:5]] == [0, 0, 0, 1, 1]
    assert records[4]["bad_steps_in_a_row"] == 2
    saved = _checkpoint(tmp_path)
    assert saved["step"] == 2  # no checkpoint was written inside the streak
    # The good checkpoint restores and training continues from it once the data is fixed.
    config.toy_nan.bad_steps = (-1,)
    config.train.max_steps = 4
    assert train_and_evaluate(config, str(tmp_path))["step"] == 4
    # The resume cut the log back to step 2's checkpoint: steps 3-5 of the failed run are
    # gone, steps 3-4 of the resumed one logged once.
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["skipped"] for r in records] == [0, 0, 0, 0]


def test_a_run_ending_in_a_non_finite_streak_saves_its_last_finite_state(tmp_path, capsys):
    config = tiny_config("toy_nan")  # 2 epochs of 2 steps
    config.toy_nan.bad_steps = (2, 3)  # steps 3 and 4, the last two, are skipped
    config.eval.enabled = False
    workdir = str(tmp_path / "run")
    result = train_and_evaluate(config, workdir)
    assert result["finished"] and result["step"] == 4
    assert "the last 2 steps were non-finite and skipped" in capsys.readouterr().out
    # The final checkpoint is written inside the streak: the parameters of step 2.
    final, good = _checkpoint(workdir), _checkpoint(workdir, 2)
    assert final["step"] == 4 and int(final["['bad_steps']"]) == 2
    kept = ("['params']", "['opt_state']", "['model_state']", "['method_state']")
    assert any(name.startswith("['opt_state']") for name in good)
    for name in good:
        if name.startswith(kept):
            np.testing.assert_array_equal(final[name], good[name], err_msg=name)
    # What reads a finished run finds it: a rerun is finished, evaluation reads step 4.
    assert train_and_evaluate(config, workdir)["step"] == 4
    report = evaluate_main(
        ["--workdir", workdir, "--protocol", "knn", "--no-plots", "--config.eval.knn_k=1"]
        + ["--config.train.progress_bar=false"]
    )
    assert report["step"] == 4
    # A run stopped before its first checkpoint: the commands say how far it got.
    config.toy_nan.bad_steps = tuple(range(100))
    config.train.max_bad_steps = 1
    stopped = str(tmp_path / "stopped")
    with pytest.raises(NonFiniteError, match="no checkpoint had been written yet"):
        train_and_evaluate(config, stopped)
    with pytest.raises(SystemExit, match="no complete checkpoint .*logged up to step 1 in"):
        evaluate_main(["--workdir", stopped, "--protocol", "knn"])


# ----------------------------------------------------------------- checkpoints


def test_a_rerun_with_another_config_is_refused_and_touches_nothing(tmp_path):
    """A checkpoint continues the run whose config it saved: a rerun that changes the model,
    the optimiser or the batch size is refused naming the fields (the checkpoints are not
    corrupt: none is set aside, the log is kept); run-control fields may change (#30)."""
    config = tiny_config("supervised")
    config.train.max_steps = 2
    config.eval.enabled = False
    workdir = tmp_path / "run"
    train_and_evaluate(config, str(workdir))
    log = (workdir / "metrics.jsonl").read_bytes()
    saved = _checkpoint(workdir)
    for field, value in (("optim.lr", 0.5), ("train.batch_size", 4), ("seed", 7)):
        changed = tiny_config("supervised")
        changed.eval.enabled = False
        section, _, name = field.rpartition(".")
        (changed[section] if section else changed)[name] = value
        with pytest.raises(ConfigChangedError, match=rf"checkpoint 2\): {field}: .* \(saved\)"):
            train_and_evaluate(changed, str(workdir))
    changed.model.overrides.width = 8
    changed.seed = config.seed
    with pytest.raises(
        ConfigChangedError,
        match=r"model.overrides.width: 4 \(saved\) -> 8.*"
        r"--config.model.init_from=",
    ):
        train_and_evaluate(changed, str(workdir))
    assert not (workdir / "corrupt_checkpoints").exists()
    assert (workdir / "metrics.jsonl").read_bytes() == log
    _assert_same_state(_checkpoint(workdir), saved)
    # Longer, logged and evaluated otherwise: the same run, resumed.
    config.train.max_steps = 3
    config.train.log_every_steps = 3
    config.eval.enabled = True
    assert train_and_evaluate(config, str(workdir))["step"] == 3
    assert (workdir / "metrics.jsonl").read_bytes().startswith(log)  # steps 1-2 kept
    assert [r["step"] for r in read_metrics(str(workdir))] == [1, 2, 3]


# ----------------------------------------------------------------- evaluation


def test_eval_schedule_tracks_the_best_and_writes_history(tmp_path, capsys):
    config = tiny_config("moco")
    config.train.num_epochs = 4
    config.eval.after_first_epoch = True  # then every epoch from epoch index 2 (= 0.5 * 4)
    config.eval.every_epochs_from = ((0.5, 1),)
    config.eval.knn_ks = (1, 2)
    train_and_evaluate(config, str(tmp_path))
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert [h["epoch"] for h in saved["history"]] == [1.0, 3.0, 4.0]
    metric = config.eval.best_metric
    best = max(saved["history"], key=lambda h: h[metric])
    assert saved["best"] == {"step": best["step"], "epoch": best["epoch"], metric: best[metric]}
    assert saved[metric] == saved["history"][-1][metric]
    # each metric's own best epoch (BuCSFR's [Best] line), kNN at every knn_ks K included
    assert {"knn_top1", "knn_top1@1", "knn_top1@2"} <= set(saved["best_each"])
    for name, got in saved["best_each"].items():  # mAP: in the final evaluation only
        top = max((h for h in saved["history"] if name in h), key=lambda h: h[name])
        assert got == {"value": top[name], "epoch": top["epoch"], "step": top["step"]}
    assert "best of each (value@epoch): retrieval_recall@1=" in capsys.readouterr().out


def herbs_eval_epochs(max_epochs: int) -> list[int]:
    """HERBS main.py as written (spec 5.5): eval_freq mutated after each epoch's training,
    then `epoch == 0 or (epoch + 1) % eval_freq == 0`."""
    eval_freq, out = 10, []
    for epoch in range(max_epochs):
        if epoch >= max_epochs * 0.9:
            eval_freq = 1
        elif epoch >= max_epochs * 0.8:
            eval_freq = 2
        if epoch == 0 or (epoch + 1) % eval_freq == 0:
            out.append(epoch + 1)
    return out


@pytest.mark.parametrize("num_epochs", [80, 50, 7])
def test_herbs_evaluation_schedule_matches_the_original_loop(num_epochs):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config_file(os.path.join(repo, "configs", "cub_herbs.py"))
    got = evaluation_epochs(config.eval, num_epochs)
    assert sorted(got) == herbs_eval_epochs(num_epochs)
    if num_epochs == 80:
        assert sorted(got)[:9] == [1, 10, 20, 30, 40, 50, 60, 66, 68]


def test_evaluation_schedule_rejects_bad_rules():
    config = tiny_config("moco")
    config.eval.every_epochs_from = ((1.5, 2),)
    with pytest.raises(ValueError, match="every_epochs_from"):
        evaluation_epochs(config.eval, 10)


def test_evaluation_only_run_needs_no_optimiser_and_no_train_loader(tmp_path, monkeypatch):
    import fgjax.train.loop as loop

    def refuse(*args, **kwargs):
        raise AssertionError("an evaluation-only run built a train loader / optimiser")

    monkeypatch.setattr(loop, "make_train_loader", refuse)
    monkeypatch.setattr(loop.optim, "make_optimizer", refuse)
    config = tiny_config("moco")
    config.train.num_epochs = 0
    result = train_and_evaluate(config, str(tmp_path))
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["step"] == 0 and saved["knn_top1"] == result["eval"]["knn_top1"]
    assert result["state"].opt_state == {}
    assert not (tmp_path / "checkpoints").exists()


def test_progress_is_plain_lines_when_not_on_a_terminal(tmp_path, capsys):
    config = tiny_config("moco")
    config.train.progress_bar = True
    config.train.log_every_steps = 2
    config.eval.enabled = False
    train_and_evaluate(config, str(tmp_path))
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "\r" not in text
    assert [line.split(" (")[0] for line in text.splitlines() if line.startswith("train ")] == [
        "train 2/4",
        "train 4/4",
    ]


# ----------------------------------------------------------------- methods own their config


def test_a_method_declares_its_section_and_views_and_unknown_fields_stay_errors():
    from fgjax.config import check_override_names
    from fgjax.methods import build_method, registered_methods

    assert {"moco", "byol", "supervised", "toy_teacher"} <= set(registered_methods())
    moco = default_config("moco")
    assert (
        moco.moco.temperature == 0.2
        and "byol" not in moco
        and set(moco.views)
        == {
            "view1",
            "view2",
        }
    )
    teacher = default_config("toy_teacher")
    assert set(teacher.views) == {"global1", "global2", "ddt1", "ddt2"}
    with pytest.raises(ValueError, match=r"config.moco.temprature \(did you mean config.moco"):
        check_override_names(moco, ["--config.moco.temprature=0.1"])
    check_override_names(moco, ["--config.data.coarse=last_word"])  # README documents it
    with pytest.raises(ValueError, match="unknown config field config.byol"):
        check_override_names(moco, ["--config.byol.dim=8"])
    with pytest.raises(ValueError, match="choose one of"):
        default_config("mocco")
    moco.method = "byol"
    with pytest.raises(ValueError, match="has no 'byol' section"):
        build_method(moco, run_info(moco))
    moco.method = "moco"
    del moco.views["view2"]
    with pytest.raises(ValueError, match="no config.views.view2"):
        build_method(moco, run_info(moco))
