"""Command line: `fgjax train --config configs/<recipe>.py --workdir DIR`.

Any config field can be overridden, e.g. `--config.optim.lr=0.1
--config.train.batch_size=128`; unknown fields and values of the wrong type are
errors that name the field. A user error (a missing dataset, a bad file or value)
prints one `error:` line and exits with status 1; `--debug` shows the traceback.
Rerunning the same command resumes from the latest checkpoint in DIR.

Several hosts: run the same command on every host with `--multihost` (jax detects a
Cloud TPU VM slice or a SLURM job) or with `--coordinator=HOST:PORT --num_processes=N
--process_id=I` (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); the
workdir must be a folder every host sees. Only process 0 prints and writes logs.
"""

from __future__ import annotations

import functools
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fgjax.config import (
    check_override_names,
    config_path_from_argv,
    load_config_file,
    set_model_overrides,
    split_model_overrides,
)
from fgjax.core.cli import USER_ERRORS, user_error_exit

_DEMO = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "configs",
    "demo.py",
)

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEMO, "Recipe file in configs/ (default: the embedded demo).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/demo", "Checkpoints, metrics.jsonl and eval.json go here."
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Join the other processes (jax.distributed.initialize) first."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "HOST:PORT of process 0 (implies --multihost; default: detected)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (implies --multihost; default: detected)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (implies --multihost; default: detected)."
)
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an error.")


def main(argv: list[str], model_overrides: dict[str, str] | None = None) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    try:
        if _MULTIHOST.value or any(v is not None for v in explicit):
            from fgjax.core.distributed import initialize

            initialize(*explicit)
        from fgjax.train.loop import train_and_evaluate

        set_model_overrides(_CONFIG.value, model_overrides or {})

        if jax.process_index() != 0:  # one copy of every message: process 0's
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's lifetime
        devices = f"{jax.device_count()} x {jax.devices()[0].platform}"
        print(f"devices: {devices}, processes: {jax.process_count()}")
        result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except USER_ERRORS as err:  # a message, not a traceback (checkpoints stay intact)
        if _DEBUG.value:
            raise
        raise user_error_exit(err) from None
    if result.get("stopped_by") == "SIGINT":
        sys.exit(130)  # the shell's status for a Ctrl-C (after the checkpoint was saved)


def run(argv: list[str]) -> None:
    """Validate override names against the recipe, then parse flags and train
    (`--config.model.overrides.<field>` set after parsing, for the final `model.arch`)."""
    try:
        argv, model_overrides = split_model_overrides(argv)
        check_override_names(load_config_file(config_path_from_argv(argv, _DEMO)), argv)
    except USER_ERRORS as err:
        raise user_error_exit(err) from None
    sys.argv = argv  # ml_collections' config flag takes its override flags from sys.argv
    app.run(functools.partial(main, model_overrides=model_overrides), argv=argv)


if __name__ == "__main__":
    run(sys.argv)
