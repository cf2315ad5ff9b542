"""The training loop: data -> jitted step -> metrics, hooks, checkpoints, evaluation.

Resumes automatically from the newest restorable checkpoint in the workdir (train
state and data-iterator position), so a killed run finishes with the same parameters
as an uninterrupted one. SIGTERM or SIGINT (Ctrl-C) saves a checkpoint and returns
cleanly; one trainer at a time holds the workdir (`workdir_lock`). A checkpoint
that cannot be written (a full disk) stops the run with `checkpoint.CheckpointSaveError`,
naming the step's folder and the intact previous step a rerun resumes from. Evaluation
runs at the end, optionally before training and after the epochs `evaluation_epochs` names;
`eval.json` holds the final numbers, the history, the best epoch and each metric's best.
`config.train.num_epochs=0` only evaluates (no optimiser, no train loader).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
from typing import Any

import jax
import ml_collections

from fgjax.config import photometric_spec
from fgjax.core.distributed import all_processes, say
from fgjax.core.progress import progress
from fgjax.core.sharding import global_batch, put_replicated
from fgjax.data.grain_utils import workers_ignore_sigint
from fgjax.data.train_loader import make_train_loader
from fgjax.eval.suite import Evaluator as Evaluator  # re-exported: tests patch loop.Evaluator
from fgjax.methods import Method
from fgjax.train import optim
from fgjax.train.checkpoint import Checkpointer
from fgjax.train.metrics_log import MetricsWriter, Throughput
from fgjax.train.resume import check_same_run
from fgjax.train.run import Run
from fgjax.train.run import training_classes as training_classes  # re-exported
from fgjax.train.state import TrainState, create_train_state
from fgjax.train.step import jit_train_step, make_train_step
from fgjax.train.workdir_lock import LOCK_NAME, hold_workdir


class NonFiniteError(FloatingPointError):
    """Too many non-finite steps in a row; the message names the last good checkpoint."""


class _StopRequest:
    """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the loop checks after each step, from
    the start of a run (a signal during setup stops it before its first step). A second
    Ctrl-C interrupts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name: str | None = None  # the first signal received
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame):
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if jax.process_index() == 0:  # the run may be waiting on data or a compile
                print(
                    "SIGINT: saving and stopping after this step; Ctrl-C again stops at once",
                    file=sys.stderr,
                    flush=True,
                )

    def agreed(self, sync_point: bool) -> bool:
        """Whether to save and stop after this step. Several processes must save together
        (orbax) and each receives its SIGTERM at its own time (a preempted TPU slice), so
        they stop together at the first `sync_point` step (one every process checks)
        after any of them was asked to."""
        if jax.process_count() == 1:
            return self.requested
        return sync_point and "1" in all_processes(str(int(self.requested)))

    def restore(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _write_json(path: str, payload: Any) -> None:
    """Write `payload` to `path` on process 0, atomically (a kill leaves the old file or
    the new one, never half of one)."""
    if jax.process_index() == 0:
        partial = path + ".partial"
        with open(partial, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(partial, path)


def _read_json(path: str, default: Any) -> Any:
    if not os.path.exists(path):
        return default
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} is damaged ({err}); repair it, or delete it to start that record "
                "afresh (the checkpoints are untouched)"
            ) from None


def _format(results: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in results.items())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming if it holds checkpoints), then evaluate.

    Returns `{'step': last step, 'finished': bool, 'state': TrainState, 'eval': {...},
    'stopped_by': 'SIGTERM' | 'SIGINT'}` ('eval' only when training finished and
    `config.eval.enabled`, 'stopped_by' only when a signal stopped it). Refuses
    (`WorkdirInUseError`) a workdir another live trainer holds.
    """
    stop = _StopRequest()  # first: a signal from here on stops the run cleanly
    try:
        with workers_ignore_sigint():  # a Ctrl-C is for the trainer, which ends its workers
            return _train_in_workdir(config, workdir, stop)
    finally:
        stop.restore()


def _train_in_workdir(config, workdir: str, stop: _StopRequest) -> dict[str, Any]:
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    # Process 0 speaks for the run; a refusal leaves the holder's workdir untouched.
    lock = hold_workdir(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        try:
            run = Run(config)
            if config.train.num_epochs == 0:
                return _evaluate_only(config, workdir, run)
            result = _train(config, workdir, run, stop)
        except BaseException:
            if created and jax.process_index() == 0:
                _remove_if_unused(workdir)
            raise
        if created and result["step"] == 0 and jax.process_index() == 0:
            _remove_if_unused(workdir)  # stopped before its first step
        return result


def _remove_if_unused(workdir: str) -> None:
    """Remove `workdir` if it holds nothing a rerun or a user needs: at most config.json,
    the trainer lock, empty files and empty folders (a run that failed or was stopped before
    its first step leaves no empty workdir)."""
    for folder, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(folder, name)
            kept = folder == workdir and name in ("config.json", LOCK_NAME)
            if not kept and os.path.getsize(path):
                return
    shutil.rmtree(workdir, ignore_errors=True)


def _evaluate_only(config, workdir: str, run: Run) -> dict[str, Any]:
    state = create_train_state(
        run.method, None, run.image_shape, config.seed, config.model.init_from
    )
    state = put_replicated(state, run.mesh)
    _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    result: dict[str, Any] = {"step": 0, "finished": True, "state": state}
    if config.eval.enabled:
        result["eval"] = run.evaluate(state)
        payload = {"step": 0, **result["eval"], **_replaced_images(run)}
        _write_json(os.path.join(workdir, "eval.json"), payload)
        say("evaluated:", _format(result["eval"]))
    return result


def _replaced_images(run: Run) -> dict[str, dict[str, list[str]]]:
    """`{'replaced_images': {split: [image: reason, ...]}}` for eval.json when the last
    evaluation replaced images by black ones (config.data.skip_bad), else {}: its numbers
    are not of those images."""
    replaced = {split: names for split, names in run.extractor.replaced.items() if names}
    return {"replaced_images": replaced} if replaced else {}


def evaluation_epochs(eval_config: ml_collections.ConfigDict, num_epochs: int) -> frozenset[int]:
    """Epoch counts n (1..num_epochs) after which the periodic evaluation runs.

    After epoch index e = n - 1, HERBS' rule (spec 5.5): e == 0 (`after_first_epoch`) or
    n % every == 0, where `every` is `every_epochs`, replaced by the last
    `(fraction, every)` of `every_epochs_from` with e >= fraction * num_epochs.
    """
    rules = [tuple(rule) for rule in eval_config.every_epochs_from]
    for rule in rules:
        if len(rule) != 2 or not 0 <= rule[0] <= 1 or int(rule[1]) < 1:
            raise ValueError(
                "config.eval.every_epochs_from must hold (fraction in [0, 1], every >= 1) "
                f"pairs, got {rule!r}"
            )
    if eval_config.every_epochs < 0:
        raise ValueError(f"config.eval.every_epochs must be >= 0, got {eval_config.every_epochs}")
    epochs = set()
    for n in range(1, num_epochs + 1):
        every = eval_config.every_epochs
        for fraction, later in sorted(rules):
            if n - 1 >= fraction * num_epochs:
                every = int(later)
        if (eval_config.after_first_epoch and n == 1) or (every and n % every == 0):
            epochs.add(n)
    return frozenset(epochs)


# Evaluation keys (last `/` part) that are not "higher is better": HERBS' outer errors
# (mistakes outside a class group) are minimised, its group sizes are not scores.
_LOWER_IS_BETTER = ("outer_errors",)
_NOT_SCORES = ("count",)


class _EvalHistory:
    """Evaluations during training, kept in `eval_history.json` so a resumed run keeps
    them; the best entry maximises `config.eval.best_metric`."""

    def __init__(self, workdir: str, metric: str):
        self.path = os.path.join(workdir, "eval_history.json")
        self.metric = metric
        self.entries: list[dict[str, Any]] = _read_json(self.path, [])

    def has(self, step: int) -> bool:
        return any(e["step"] == step for e in self.entries)

    def add(self, step: int, epoch: float, results: dict[str, float]) -> None:
        self.entries = [e for e in self.entries if e["step"] != step]
        self.entries.append({"step": step, "epoch": epoch, **results})
        self.entries.sort(key=lambda e: e["step"])
        _write_json(self.path, self.entries)

    def best(self) -> dict[str, Any] | None:
        scored = [e for e in self.entries if self.metric in e]
        if not scored:
            return None
        top = max(scored, key=lambda e: e[self.metric])
        return {"step": top["step"], "epoch": top["epoch"], self.metric: top[self.metric]}

    def best_each(self) -> dict[str, dict[str, Any]]:
        """`{metric: {"value", "epoch", "step"}}`: each metric's best over the evaluations,
        chosen separately (BuCSFR's "[Best]" line, spec 7.1). The maximum, or the minimum
        for `_LOWER_IS_BETTER` keys; the earliest evaluation on a tie; NaNs and
        `_NOT_SCORES` keys left out."""
        out: dict[str, dict[str, Any]] = {}
        for entry in self.entries:
            for name, value in entry.items():
                last = name.rsplit("/", 1)[-1]
                if name in ("step", "epoch") or last in _NOT_SCORES:
                    continue
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if value != value:  # NaN (e.g. mAP without any relevant item)
                    continue
                sign = -1 if last in _LOWER_IS_BETTER else 1
                held = out.get(name)
                if held is None or sign * value > sign * held["value"]:
                    out[name] = {"value": value, "epoch": entry["epoch"], "step": entry["step"]}
        return out


def _format_best(best: dict[str, dict[str, Any]]) -> str:
    """`metric=value@epoch` for every entry of `best_each`, on one line."""
    return "  ".join(f"{k}={v['value']:.4f}@{v['epoch']:g}" for k, v in best.items())


def _apply_hook(method: Method, epoch: int, state: TrainState, tools, mesh, writer, step: int):
    """Run `method.on_epoch_start`: merge its state into the method state, log its metrics."""
    update = method.on_epoch_start(epoch, state, tools)
    if update is None:
        return state
    if update.metrics:
        writer.write(step, {"epoch": float(epoch), **update.metrics})
    method_state = dict(state.method_state)
    for key, value in update.state.items():
        if key not in method_state:
            raise KeyError(
                f"{type(method).__name__}.on_epoch_start returned {key!r}, which init_state "
                f"did not create (method state keys: {sorted(method_state)})"
            )
        old = jax.tree.map(lambda x: (x.shape, x.dtype), method_state[key])
        new = jax.tree.map(lambda x: (x.shape, x.dtype), value)
        if old != new:
            raise ValueError(
                f"{type(method).__name__}.on_epoch_start: {key!r} changed from {old} to {new}"
            )
        method_state[key] = put_replicated(value, mesh)
    return state.replace(method_state=method_state)


def _record_missing(workdir: str, run: Run) -> None:
    """List in `<workdir>/missing_images.txt` the images a source left out because they are
    missing from its tree (config.data.allow_missing), one `split: path` per line."""
    lines = [
        f"{source.split}: {path}\n"
        for source in run.sources.values()
        for path in getattr(source, "missing", ())
    ]
    if lines and jax.process_index() == 0:
        with open(os.path.join(workdir, "missing_images.txt"), "w") as f:
            f.writelines(dict.fromkeys(lines))


class _BadImages:
    """Undecodable training images replaced under config.data.skip_bad: each is announced
    once and appended to `<workdir>/bad_images.txt` (process p > 0 of several, which reads
    other images: `bad_images.process<p>.txt`); `count` (this process's, this run's) goes
    into the metrics log."""

    def __init__(self, workdir: str):
        p = jax.process_index()
        self.path = os.path.join(workdir, f"bad_images{f'.process{p}' if p else ''}.txt")
        self.count = 0
        self._seen: set[str] = set()

    def add(self, errors: list[str]) -> None:
        self.count += len(errors)
        new = [e for e in dict.fromkeys(errors) if e not in self._seen]
        if not new:
            return
        self._seen.update(new)
        with open(self.path, "a") as f:
            f.writelines(e + "\n" for e in new)
        for e in new:  # every process its own (it reads other images): on stderr
            message = f"warning: replaced an undecodable image (config.data.skip_bad): {e}"
            print(message, file=sys.stderr)


def _train(config, workdir: str, run: Run, stop: _StopRequest) -> dict[str, Any]:
    """Train `run` in `workdir`, step by step: set up, resume (or start), the step loop
    (each step: epoch hook, train step, non-finite check, log, stop vote, checkpoint,
    periodic evaluation), then the final evaluation and eval.json."""
    training = _TrainingRun(config, workdir, run, stop)
    training.resume()
    training.evaluate_lost()
    training.prepare_steps()
    # A signal during setup stops the run before its first step (nothing new to save).
    early = training.stopped_during_setup()
    try:
        while not early and training.step < run.stop_step:
            if training.run_step():  # an agreed SIGTERM/SIGINT: saved, stop here
                break
    finally:
        training.close()
    return training.final_report()


class _TrainingRun:
    """One training run's loop state (train state, iterator, step, metrics log,
    checkpointer, evaluation history) and its named steps, in the order `_train` runs them."""

    def __init__(self, config, workdir: str, run: Run, stop: _StopRequest):
        """Set up: the evaluation epochs (checked before any work), the schedule and
        optimiser, the initial state, the train loader, the checkpointer (a workdir of
        another run is refused untouched), the evaluation history and the metrics log."""
        c = self.c = config
        self.workdir, self.run, self.stop = workdir, run, stop
        self.method, self.mesh = run.method, run.mesh
        self.per_epoch = run.steps_per_epoch
        self.eval_epochs = evaluation_epochs(c.eval, c.train.num_epochs)
        self.schedule = optim.make_schedule(
            c.optim,
            c.train.batch_size,
            self.per_epoch,
            c.train.num_epochs,
            c.train.accumulate_steps,
            run.micro_batches_per_epoch,
        )
        self.tx = optim.make_optimizer(c.optim, self.schedule)
        state = create_train_state(self.method, self.tx, run.image_shape, c.seed, c.model.init_from)
        self.state = put_replicated(state, self.mesh)
        self.frozen = put_replicated(self.method.init_frozen(), self.mesh)
        self.loader = self._make_loader()  # held as long as the run, as its iterator
        self.iterator = iter(self.loader)
        self.checkpointer = Checkpointer(workdir, c.train.keep_checkpoints)
        self.config_json = c.to_json_best_effort()
        self._check_same_run()
        self.history = _EvalHistory(workdir, c.eval.best_metric)
        self.initial_path = os.path.join(workdir, "eval_initial.json")
        self.writer = MetricsWriter(workdir)
        self.restored = False
        self.step = 0
        self.last_saved: int | None = None  # the newest checkpoint's step
        self.previous_bad = None  # the last step's non-finite streak, still on device

    def _make_loader(self):
        """The train loader of `config.data` and `config.train`, this process's share."""
        c = self.c
        return make_train_loader(
            self.run.train_source,
            global_batch_size=c.train.batch_size,
            views=self.run.view_specs,
            seed=c.seed,
            num_workers=c.data.num_workers,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            skip_bad=c.data.skip_bad,
            keep_last=c.train.keep_last_batch,
            sampler=c.data.sampler,
            pk_classes=c.data.pk_classes,
            pk_images=c.data.pk_images,
        )

    def _check_same_run(self) -> None:
        """A rerun in a workdir with checkpoints continues the same run, or is refused."""
        saved = self.checkpointer.saved_config()
        if saved is not None:
            also = tuple(f"{self.method.name}.{field}" for field in self.method.resumable_fields)
            check_same_run(saved[1], json.loads(self.config_json), self.workdir, saved[0], also)

    def resume(self) -> None:
        """Restore the newest checkpoint (state, iterator position) and rewind the metrics
        log to it; without one, start afresh: an empty log, config.json, and the untrained
        evaluation when `config.eval.at_start`."""
        restored = self.checkpointer.restore(self.state, self.iterator)
        if restored is not None:
            self.state, metrics_bytes = restored
            self.restored = True
            if metrics_bytes is not None:
                self.writer.rewind(metrics_bytes)  # the steps after the checkpoint run again
            say(f"resumed from step {int(self.state.step)} in {self.workdir}")
        else:
            self.writer.rewind(0)  # a run killed before its first checkpoint restarts at 0
            _write_json(os.path.join(self.workdir, "config.json"), json.loads(self.config_json))
            if self.c.eval.enabled and self.c.eval.at_start:
                _write_json(self.initial_path, self.run.evaluate(self.state))

    def evaluate_lost(self) -> None:
        """Run the periodic evaluation of the restored step if the run stopped (killed or
        signalled) after its checkpoint, before the evaluation was recorded."""
        at = int(self.state.step)
        if self.restored and self.evaluation_due(at) and not self.history.has(at):
            say(f"step {at}: its evaluation was not recorded before the run stopped; evaluating")
            self.evaluate_periodically(at)

    def prepare_steps(self) -> None:
        """Compile the train step; set up the bad-image record, the missing-image list,
        the throughput meter and the progress bar at the restored step."""
        c = self.c
        view_specs = {name: photometric_spec(c, name) for name in self.method.view_names}
        step_fn = make_train_step(
            self.method, self.tx, view_specs, self.run.info, c.train.accumulate_steps
        )
        self.train_step = jit_train_step(step_fn, self.mesh)
        self.bad_images = _BadImages(self.workdir)
        _record_missing(self.workdir, self.run)
        self.throughput = Throughput(c.train.batch_size)
        self.step = int(self.state.step)
        self.last_saved = self.step if self.restored else None
        self.bar = progress(
            self.run.stop_step,
            initial=self.step,
            desc="train",
            enabled=c.train.progress_bar,
            every=c.train.log_every_steps,
        )
        self.throughput.measure(self.step)

    def stopped_during_setup(self) -> bool:
        """Whether a signal came before the first step (one process: stop, nothing to save)."""
        early = self.stop.requested and jax.process_count() == 1
        if early:
            say(
                f"{self.stop.signal_name} before step {self.step + 1}: nothing new to save, exiting"
            )
        return early

    def run_step(self) -> bool:
        """One step and what follows it: epoch hook, train step, non-finite check, log,
        stop vote, checkpoint, periodic evaluation. True when a signal stops the run here
        (after its checkpoint)."""
        if self.step % self.per_epoch == 0:
            epoch = self.step // self.per_epoch
            self.state = _apply_hook(
                self.method,
                epoch,
                self.state,
                self.run.extractor,
                self.mesh,
                self.writer,
                self.step,
            )
        metrics = self.train_one_step()
        self.check_finite(metrics)
        self.log(metrics)
        stopping = self.stop.agreed(self.step % self.c.train.log_every_steps == 0)
        self.maybe_checkpoint(last=self.step == self.run.stop_step or stopping)
        if stopping:
            say(f"{self.stop.signal_name}: saved step {self.step}, exiting")
            return True
        if self.evaluation_due(self.step):
            self.evaluate_periodically(self.step)
        return False

    def train_one_step(self) -> dict[str, jax.Array]:
        """Take the next batch (recording its replaced images) and run the jitted step."""
        local = next(self.iterator)
        self.bad_images.add(local.pop("bad_images"))
        self.state, metrics = self.train_step(
            self.state, self.frozen, global_batch(local, self.mesh)
        )
        self.step += 1
        self.bar.update(1)
        return metrics

    def check_finite(self, metrics: dict[str, jax.Array]) -> None:
        """Raise `NonFiniteError` after `config.train.max_bad_steps` non-finite steps in a row.
        The previous step's streak is read while this one runs (one step in flight)."""
        bad = 0 if self.previous_bad is None else int(self.previous_bad)
        self.previous_bad = metrics["bad_steps_in_a_row"]  # not donated, unlike the state
        if bad < self.c.train.max_bad_steps:
            return
        kept = (
            f"the last checkpoint (step {self.last_saved}) in {self.workdir} holds the last "
            "finite state. Check the data (a rerun resumes), or start a new run from "
            "it with a lower config.optim.lr (--config.model.init_from="
            f"{self.workdir} in another workdir)"
            if self.last_saved is not None
            else "no checkpoint had been written yet. Lower config.optim.lr or check the data"
        )
        raise NonFiniteError(
            f"{bad} non-finite steps in a row (loss or gradients NaN/inf) before "
            f"step {self.step}: stopping. The parameters were not updated by those steps; "
            f"{kept}."
        )

    def log(self, metrics: dict[str, jax.Array]) -> None:
        """Every `config.train.log_every_steps` and at the last step: write the step's
        metrics, bad-image count, epoch, learning rate and throughput; update the bar."""
        step = self.step
        if step % self.c.train.log_every_steps != 0 and step != self.run.stop_step:
            return
        logged = {k: float(v) for k, v in jax.device_get(metrics).items()}
        logged.update(
            bad_images=self.bad_images.count,
            epoch=step / self.per_epoch,
            lr=float(self.schedule(step - 1)),
            images_per_s=self.throughput.measure(step),
        )
        self.writer.write(step, logged)
        self.bar.set_postfix(loss=f"{logged['loss']:.4f}", img_s=f"{logged['images_per_s']:.0f}")

    def maybe_checkpoint(self, last: bool) -> None:
        """Save at every `config.train.checkpoint_every_steps` and at the `last` step.
        Periodic saves skip a non-finite streak (a run stopped by it resumes from before
        it). The last save does not: skipped steps left the state the last finite one."""
        step = self.step
        if not (last or step % self.c.train.checkpoint_every_steps == 0):
            return
        streak = int(self.state.bad_steps)
        if last or not streak:
            self.checkpointer.save(
                step, self.state, self.iterator, self.config_json, self.writer.size()
            )
            self.last_saved = step
        if last and streak:
            say(
                f"step {step}: the last {streak} steps were non-finite and skipped; "
                f"the checkpoint holds the parameters of step {step - streak}"
            )

    def evaluation_due(self, step: int) -> bool:
        """Whether the periodic evaluation runs after `step` (the final one is separate)."""
        in_epochs = step % self.per_epoch == 0 and step // self.per_epoch in self.eval_epochs
        return self.c.eval.enabled and in_epochs and step < self.run.stop_step

    def evaluate_periodically(self, step: int) -> None:
        """Evaluate the current state after `step` and record it in the history."""
        results = self.run.evaluate(self.state, periodic=True)
        self.history.add(step, step / self.per_epoch, results)
        say(f"epoch {step / self.per_epoch:g}:", _format(results))

    def close(self) -> None:
        """Close the bar, give the signals back (a signal during the final evaluation
        interrupts it) and wait for the last save (`CheckpointSaveError` if it failed)."""
        self.bar.close()
        self.stop.restore()
        try:
            self.checkpointer.wait()
        finally:
            self.checkpointer.close()

    def final_report(self) -> dict[str, Any]:
        """The result; when training finished and `config.eval.enabled`, the final
        evaluation, added to the history and written with the best entries to eval.json."""
        step, run = self.step, self.run
        finished = step >= run.stop_step
        result: dict[str, Any] = {"step": step, "finished": finished, "state": self.state}
        if self.stop.requested and not finished:
            result["stopped_by"] = self.stop.signal_name
        if finished and self.c.eval.enabled:
            result["eval"] = self._final_evaluation()
        return result

    def _final_evaluation(self) -> dict[str, float]:
        """Evaluate the trained state; write eval.json (final numbers, best entry, each
        metric's best, history, replaced images, the untrained numbers) and print them."""
        step, history = self.step, self.history
        final = self.run.evaluate(self.state)
        history.add(step, step / self.per_epoch, final)
        best_each = history.best_each()
        payload = {
            "step": step,
            **final,
            "best": history.best(),
            "best_each": best_each,
            "history": history.entries,
        }
        payload.update(_replaced_images(self.run))
        initial = _read_json(self.initial_path, None)
        if initial is not None:
            payload["initial"] = initial
            say("untrained:", _format(initial))
        _write_json(os.path.join(self.workdir, "eval.json"), payload)
        say("trained:  ", _format(final))
        if len(history.entries) > 1:
            say("best of each (value@epoch):", _format_best(best_each))
        return final
