"""The training loop: data -> jitted step -> metrics, checkpoints, evaluation.

Resumes automatically from the latest checkpoint in the workdir (train state and
data-iterator position), so a killed run finishes with the same parameters as an
uninterrupted one. SIGTERM saves a checkpoint and returns cleanly.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import jax
import ml_collections

from fgjax.config import photometric_specs
from fgjax.data.pipeline import make_train_loader, steps_per_epoch
from fgjax.data.sources import build_source
from fgjax.eval.evaluate import make_evaluator
from fgjax.methods import build_method
from fgjax.train import optim
from fgjax.train.checkpoint import Checkpointer
from fgjax.train.metrics_log import MetricsWriter, Throughput, progress_bar
from fgjax.train.sharding import check_batch_divisible, global_batch, make_mesh, put_replicated
from fgjax.train.state import create_train_state
from fgjax.train.step import jit_train_step, make_train_step


class _StopRequest:
    """Turns SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _write_json(path: str, payload: Any) -> None:
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming if it holds checkpoints), then evaluate.

    Returns `{'step': last step, 'finished': bool, 'state': TrainState, 'eval': {...}}`
    ('eval' only when training finished). The evaluation is also written to
    `workdir/eval.json`, with the untrained network's numbers under 'initial' when
    `config.eval.at_start`.
    """
    os.makedirs(workdir, exist_ok=True)
    batch_size = config.train.batch_size
    check_batch_divisible(batch_size)
    mesh = make_mesh()

    sources = {split: build_source(config.data, split) for split in ("train", "test")}
    per_epoch = steps_per_epoch(len(sources["train"]), batch_size)
    if per_epoch == 0:
        raise ValueError(
            f"config.train.batch_size={batch_size} exceeds the {len(sources['train'])} "
            "training images"
        )
    total_steps = config.train.num_epochs * per_epoch
    stop_step = min(total_steps, config.train.max_steps) if config.train.max_steps else total_steps

    method = build_method(config, sources["train"].num_classes, total_steps)
    schedule = optim.make_schedule(config.optim, batch_size, per_epoch, config.train.num_epochs)
    tx = optim.make_optimizer(config.optim, schedule)
    image_shape = (2, config.data.image_size, config.data.image_size, 3)
    state = create_train_state(method, tx, image_shape, config.seed, config.model.init_from)
    state = put_replicated(state, mesh)

    loader = make_train_loader(
        sources["train"],
        global_batch_size=batch_size,
        image_size=config.data.image_size,
        num_views=method.num_views,
        crop_scale=tuple(config.data.crop_scale),
        crop_ratio=tuple(config.data.crop_ratio),
        interpolation=config.data.interpolation,
        seed=config.seed,
        num_workers=config.data.num_workers,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    iterator = iter(loader)
    checkpointer = Checkpointer(workdir, config.train.keep_checkpoints)
    config_json = config.to_json_best_effort()
    evaluate = make_evaluator(method, config, sources, mesh)

    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state, iterator)
        print(f"resumed from step {int(state.step)} in {workdir}")
    else:
        _write_json(os.path.join(workdir, "config.json"), json.loads(config_json))
        if config.eval.enabled and config.eval.at_start:
            initial_eval = evaluate(state.params, state.batch_stats)
            _write_json(os.path.join(workdir, "eval_initial.json"), initial_eval)
            print("untrained:", _format(initial_eval))

    train_step = jit_train_step(make_train_step(method, tx, photometric_specs(config)), mesh)
    writer = MetricsWriter(workdir)
    throughput = Throughput(batch_size)
    stop = _StopRequest()
    step = int(state.step)
    bar = progress_bar(stop_step, step, config.train.progress_bar)
    throughput.measure(step)
    try:
        while step < stop_step:
            state, metrics = train_step(state, global_batch(next(iterator), mesh))
            step += 1
            bar.update(1)
            if step % config.train.log_every_steps == 0 or step == stop_step:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                metrics.update(
                    epoch=step / per_epoch,
                    lr=float(schedule(step - 1)),
                    images_per_s=throughput.measure(step),
                )
                writer.write(step, metrics)
                bar.set_postfix(
                    loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_s']:.0f}"
                )
            if (
                step % config.train.checkpoint_every_steps == 0
                or step == stop_step
                or stop.requested
            ):
                checkpointer.save(step, state, iterator, config_json)
            if stop.requested:
                print(f"SIGTERM: saved step {step}, exiting")
                break
    finally:
        bar.close()
        stop.restore()
        checkpointer.wait()
        checkpointer.close()

    finished = step >= stop_step
    result: dict[str, Any] = {"step": step, "finished": finished}
    if finished and config.eval.enabled:
        final = evaluate(state.params, state.batch_stats)
        result["eval"] = final
        payload = {"step": step, **final}
        initial_path = os.path.join(workdir, "eval_initial.json")
        if os.path.exists(initial_path):
            with open(initial_path) as f:
                payload["initial"] = json.load(f)
        _write_json(os.path.join(workdir, "eval.json"), payload)
        if "initial" in payload:
            print("untrained:", _format(payload["initial"]))
        print("trained:  ", _format(final))
    result["state"] = state
    return result


def _format(results: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in results.items())
