"""Complete, asynchronous checkpoints: train state + data-iterator position + config.

Layout: `WORKDIR/checkpoints/<step>/{state,data,config}`. orbax writes each step to
a temporary folder and renames it when complete, so a run killed mid-save (even by
SIGKILL) resumes from the last complete step.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, workdir: str, keep: int):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True
        )
        self.manager = ocp.CheckpointManager(
            os.path.join(os.path.abspath(workdir), "checkpoints"), options=options
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, iterator: Any, config_json: str) -> None:
        """Start an async save. The iterator position is captured now, before the
        loop moves on; device arrays are copied to host before this returns."""
        data_state = json.loads(iterator.get_state().decode())
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(json.loads(config_json)),
            ),
            force=True,
        )

    def restore(self, state_template: Any, iterator: Any) -> Any:
        """Restore the latest step into `state_template`'s structure and shardings and
        move `iterator` to the saved position. Returns the restored state."""
        step = self.manager.latest_step()
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(state_template), data=ocp.args.JsonRestore()
            ),
        )
        iterator.set_state(json.dumps(restored.data).encode())
        return restored.state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
