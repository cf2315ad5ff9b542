"""Complete, asynchronous checkpoints: train state + data-iterator position + config +
the length of the metrics log at that step and a digest of the state's values.

Layout: `WORKDIR/checkpoints/<step>/{state,data,config,log}`. orbax writes each step to
a temporary folder and renames it when complete, so a run killed mid-save (even by
SIGKILL) resumes from the last complete step. A complete step that still cannot be
restored (truncated or corrupted later, or whose values no longer match the digest saved
with them: orbax keeps no checksums) is reported by path, moved to
`WORKDIR/corrupt_checkpoints/<step>` (kept for inspection, never deleted) and the
previous step is used. A step that cannot be written (a full disk) stops the run with
`CheckpointSaveError`; its temporary folder is never taken as complete, the previous
steps are not pruned, and the next run removes the leftover.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fgjax.core.distributed import all_processes, say

# Several processes: orbax writes a JSON item from process 0 only, and each process's
# loader position names its shard, so the `data` item holds every process's, in order.
_PROCESSES = "processes"


def _data_state(iterator: Any) -> dict[str, Any]:
    """The `data` item: this loader's position, or on several processes every process's
    (a collective: all processes save together)."""
    states = all_processes(iterator.get_state().decode())
    if len(states) == 1:
        return json.loads(states[0])
    return {_PROCESSES: [json.loads(state) for state in states]}


def _own_data_state(saved: dict[str, Any], where: int) -> dict[str, Any]:
    """This process's loader position in a saved `data` item."""
    states = saved.get(_PROCESSES, [saved])
    if len(states) != jax.process_count():
        raise ValueError(
            f"checkpoint step {where} was written by {len(states)} process(es), this run has "
            f"{jax.process_count()}: resume with as many processes (or start a new workdir)"
        )
    return states[jax.process_index()]


class CheckpointSaveError(OSError):
    """A checkpoint step could not be written (disk full, I/O or permission error).

    An OSError whose `errno` is the cause's (e.g. `errno.ENOSPC`) when it has one, also
    when tensorstore reports it inside a ValueError's text; `step` is the step that
    failed, `previous` the newest complete one (None when there is none), which is left
    intact: rerunning the same command resumes from it. The message names both folders.
    An async save's error surfaces when the next save starts or at `Checkpointer.wait`.
    """

    def __init__(self, message: str, code: int | None, step: int | None, previous: int | None):
        super().__init__(message)
        self.errno = code
        self.step = step
        self.previous = previous


# tensorstore's writes report the OS error inside a ValueError's text.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


class CheckpointMismatchError(ValueError):
    """A checkpoint whose state does not fit the model this config builds (not damaged)."""


def _tree_differences(saved: Any, template: Any, name: str) -> list[str]:
    """`path: saved shape vs built shape` (or only in one of them) for every leaf of
    `saved` (orbax array metadata) and `template` (arrays) that does not match."""
    flat_saved = {
        jax.tree_util.keystr(p): tuple(leaf.shape)
        for p, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]
    }
    flat_built = {
        jax.tree_util.keystr(p): tuple(np.shape(leaf))
        for p, leaf in jax.tree_util.tree_flatten_with_path(dict(template))[0]
    }
    out = []
    for path in sorted(flat_saved.keys() | flat_built.keys()):
        got, want = flat_saved.get(path), flat_built.get(path)
        if got != want:
            saved_text = "absent" if got is None else got
            out.append(
                f"{name}{path}: saved {saved_text}, built {'absent' if want is None else want}"
            )
    return out


class Checkpointer:
    def __init__(self, workdir: str, keep: int):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.quarantine = os.path.join(os.path.abspath(workdir), "corrupt_checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=True,
            # A step's temporary folder left by a killed or failed save: never a step
            # (orbax lists finished steps only), removed here.
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending: int | None = None  # the step an async save may still be writing

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def saved_config(self) -> tuple[int, dict] | None:
        """`(step, config)` of the newest checkpoint whose config item reads, else None
        (no checkpoint; an unreadable one is then the restore's to set aside)."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                item = ocp.args.Composite(config=ocp.args.JsonRestore())
                return step, dict(self.manager.restore(step, args=item).config)
            except Exception:  # noqa: BLE001 - damaged: the restore sets it aside
                continue
        return None

    def save(
        self, step: int, state: Any, iterator: Any, config_json: str, metrics_bytes: int
    ) -> None:
        """Start an async save. The iterator position is captured now, before the
        loop moves on; device arrays are copied to host before this returns.
        `metrics_bytes`: metrics.jsonl's length now (a resume cuts it back to this)."""
        data_state = _data_state(iterator)
        self.wait()  # the previous save's error names its own step
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state),
                    config=ocp.args.JsonSave(json.loads(config_json)),
                    log=ocp.args.JsonSave(
                        {"metrics_bytes": int(metrics_bytes), "digest": state_digest(state)}
                    ),
                ),
                force=True,
            )
        except Exception as err:  # noqa: BLE001 - orbax/tensorstore raise many kinds
            raise self._save_error(step, err) from err
        self._pending = step

    def restore(self, state_template: Any, iterator: Any) -> tuple[Any, int | None] | None:
        """Restore the newest restorable step into `state_template`'s structure and
        shardings and move `iterator` to its saved position. Returns the restored state
        and the metrics log's length at that step (None for checkpoints written before it
        was recorded), or None when there is no checkpoint (or none can be restored)."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            self._refuse_other_structure(step, state_template)
            items = dict(
                state=ocp.args.StandardRestore(state_template), data=ocp.args.JsonRestore()
            )
            if os.path.isdir(os.path.join(self.directory, str(step), "log")):
                items["log"] = ocp.args.JsonRestore()
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
                log = restored.log if "log" in items else {}
                if "digest" in log and state_digest(restored.state) != log["digest"]:
                    raise ValueError("its values differ from those saved (digest mismatch)")
            except Exception as err:  # noqa: BLE001 - orbax/tensorstore raise many kinds
                self._set_aside(step, err)
                continue
            iterator.set_state(json.dumps(_own_data_state(restored.data, where=step)).encode())
            return restored.state, log.get("metrics_bytes")
        return None

    def _refuse_other_structure(self, step: int, template: Any) -> None:
        """Raise `CheckpointMismatchError` when step's saved parameters, model or method
        state differ in structure or shape from what this config builds: such a checkpoint
        is not corrupt (a changed config is refused earlier by `resume.check_same_run`;
        this is e.g. another fgjax version's model) and is left in place. Metadata that
        cannot be read is left to the restore, which sets a damaged step aside."""
        handlers = {"state": ocp.StandardCheckpointHandler()}
        try:
            with _read_only_manager(self.directory, item_handlers=handlers) as manager:
                saved = manager.item_metadata(step)["state"]
            differences = [
                line
                for name in ("params", "model_state", "method_state")
                for line in _tree_differences(saved[name], getattr(template, name), name)
            ]
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore decides
            return
        if differences:
            shown = "; ".join(differences[:5]) + (" ..." if len(differences) > 5 else "")
            raise CheckpointMismatchError(
                f"checkpoint {os.path.join(self.directory, str(step))} holds a train state of "
                f"another structure than this config builds ({shown}). It is not damaged and "
                "was left in place: resume it with the fgjax version and config that wrote "
                "it, or start a new run in another workdir (--config.model.init_from=DIR "
                "loads the weights that still fit)"
            )

    def _set_aside(self, step: int, err: Exception) -> None:
        path = os.path.join(self.directory, str(step))
        moved = os.path.join(self.quarantine, str(step))
        if jax.process_index() == 0:  # one process moves it; all skip it
            os.makedirs(self.quarantine, exist_ok=True)
            shutil.rmtree(moved, ignore_errors=True)
            shutil.move(path, moved)
        self.manager.reload()
        say(
            f"checkpoint {path} cannot be restored ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); moved to {moved}, trying the previous one"
        )

    def wait(self) -> None:
        """Wait for the async save in flight; CheckpointSaveError if it failed."""
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - orbax/tensorstore raise many kinds
            self._drain_writes()
            raise self._save_error(step, err) from err

    def _drain_writes(self) -> None:
        """Wait for every write of the failed save to end. orbax raises at the first
        failed item while the others are still writing into the step's temporary folder;
        a rerun in this process (or the error's cleanup) would then race with them."""
        # orbax internals (as of 0.12), read defensively: absent, nothing is waited for
        checkpointer = getattr(self.manager, "_checkpointer", None)
        async_manager = getattr(checkpointer, "_async_manager", None)
        pending = list(getattr(async_manager, "_commit_futures", None) or ())
        while pending:
            commit = pending.pop()
            pending.extend(getattr(commit, "_futures", ()))  # a ChainedFuture's parts
            try:
                commit.result()
            except Exception:  # noqa: BLE001, S110 - the first error is the one reported
                pass

    def _save_error(self, step: int | None, err: Exception) -> CheckpointSaveError:
        code = err.errno if isinstance(err, OSError) else None
        if code is None and (found := _OS_ERROR_CODE.search(str(err))):
            code = int(found.group(1))
        text = str(err).splitlines()[0][:300] if str(err) else ""
        reason = f"[Errno {code}] {os.strerror(code)}" if code else f"{type(err).__name__}: {text}"
        self.manager.reload()  # what is complete on disk (the failed step is not)
        previous = max((s for s in self.manager.all_steps() if s != step), default=None)
        kept = (
            f"the newest complete checkpoint, step {previous} "
            f"({os.path.join(self.directory, str(previous))}), is intact and rerunning "
            "resumes from it"
            if previous is not None
            else "no checkpoint was complete yet: rerunning starts from step 0"
        )
        return CheckpointSaveError(
            f"could not write checkpoint {os.path.join(self.directory, str(step))} "
            f"({reason}): stopping; {kept} once the cause is fixed"
            + (" (free disk space)" if code == errno.ENOSPC else ""),
            code,
            step,
            previous,
        )

    def close(self) -> None:
        self.manager.close()


def state_digest(state: Any) -> str:
    """A hash of every value of `state` (its leaves' paths, dtypes, shapes and bytes).

    Saved with each checkpoint and compared at restore: orbax / tensorstore keep no
    checksums, and bytes damaged inside an array's data can read back without an error.
    The state is replicated, so each process hashes its first local copy of a leaf."""
    h = hashlib.blake2b(digest_size=16)
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        value = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)} {value.dtype} {value.shape};".encode())
        h.update(value.reshape(-1).view(np.uint8))
    return h.hexdigest()


def restore_state(workdir: str, template: Any, step: int | None = None) -> tuple[Any, int]:
    """The train state saved at `step` (default: the newest) in `WORKDIR/checkpoints`, for
    evaluation: no data iterator and no optimiser state (`opt_state` is the template's).
    `template` gives the structure, shapes and dtypes (its leaves may be abstract, e.g.
    from `jax.eval_shape`). Returns `(state, step)` with host arrays; a missing folder or
    step, or a checkpoint of another model, is an error saying what exists.
    """
    saved, step = read_saved_state(workdir, step)
    where = f"{os.path.join(os.path.abspath(workdir), 'checkpoints')}/{step}"
    fields = {
        name: conformed(getattr(template, name), saved.get(name, {}), name, where)
        for name in ("step", "params", "model_state", "method_state", "rng", "bad_steps")
    }
    return template.replace(**fields), step


@contextlib.contextmanager
def _read_only_manager(directory: str, **kwargs: Any) -> Iterator[ocp.CheckpointManager]:
    """A read-only orbax manager of `directory`, without orbax's absl warnings that it is
    read-only and that the items a reader does not ask for (log, config, data) are not
    restored: true and unactionable (12 lines before every `fgjax eval`)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(max(level, logging.ERROR))  # errors still show
    try:
        options = ocp.CheckpointManagerOptions(read_only=True)
        with ocp.CheckpointManager(directory, options=options, **kwargs) as manager:
            yield manager
    finally:
        absl.setLevel(level)


def checkpoint_step(workdir: str, step: int | None = None) -> int:
    """`step` (default: the newest) if `WORKDIR/checkpoints` holds it complete, else a
    FileNotFoundError saying what exists; reads no state."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"no checkpoints in {workdir} (no folder {directory}){_why_none(workdir)}"
        )
    with _read_only_manager(directory) as manager:
        steps = sorted(manager.all_steps())
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {directory}{_why_none(workdir)}")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint of step {step} in {directory}; steps: {steps}")
    return step


def _why_none(workdir: str) -> str:
    """What the workdir says of a run without a checkpoint: how far its log got."""
    path = os.path.join(workdir, "metrics.jsonl")
    steps = []
    if os.path.exists(path):
        try:
            with open(path) as f:
                steps = [json.loads(line)["step"] for line in f if line.strip()]
        except (ValueError, KeyError, TypeError):
            return ""
    if not steps:
        return ": the run logged no step (still starting, or it failed before training)"
    return (
        f": the run logged up to step {max(steps)} in {path} and stopped (or is still "
        "running) before its first checkpoint (config.train.checkpoint_every_steps)"
    )


def read_saved_state(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
    """`(saved train state as nested dicts of host arrays, step)` of `WORKDIR/checkpoints`
    at `step` (default: the newest), with no template; errors say what exists."""
    step = checkpoint_step(workdir, step)
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    handlers = {"state": ocp.StandardCheckpointHandler()}
    with _read_only_manager(directory, item_handlers=handlers) as manager:
        # The saved tree (nested dicts), each array put on one device of this process:
        # without a target orbax would rebuild the saving run's shardings, which fails
        # on other devices (a run of 8 GPUs or several hosts read on a laptop).
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
            manager.item_metadata(step)["state"],
        )
        saved = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        ).state
    return saved, step


def run_checkpoint(path: str) -> tuple[str, int | None] | None:
    """`(workdir, step)` when `path` is a training run: its folder (step None = the newest)
    or one of its `checkpoints/<step>` folders; None for anything else (a weights file)."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return path, None
    parent, name = os.path.split(path)
    if os.path.basename(parent) == "checkpoints" and name.isdigit() and os.path.isdir(path):
        return os.path.dirname(parent), int(name)
    return None


def conformed(want: Any, got: Any, name: str, where: str) -> Any:
    """`got` (a saved tree) as host arrays of `want`'s dtypes, after checking it has
    `want`'s structure and shapes (`want`'s leaves may be abstract); the errors name
    `where` it was read and the leaf of `name` that differs."""
    if jax.tree.structure(want) != jax.tree.structure(got):
        raise ValueError(
            f"{where}: the saved {name} does not match the configured model "
            "(was the checkpoint written with another config.model / config.method?)"
        )
    leaves = zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), strict=True)
    for (path, a), b in leaves:
        if a.shape != b.shape:
            raise ValueError(
                f"{where}: {name}{jax.tree_util.keystr(path)} has shape {b.shape}, "
                f"the configured model {a.shape}"
            )
    return jax.tree.map(lambda a, b: np.asarray(b, a.dtype), want, got)
