"""The generic, jit-compiled train step: `(state, batch) -> (state, metrics)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import optax
from jax.sharding import Mesh

from fgjax.data.augment import PhotometricSpec, photometric
from fgjax.methods.base import Method
from fgjax.train.sharding import batch_sharded, replicated
from fgjax.train.state import TrainState


def make_train_step(
    method: Method, tx: optax.GradientTransformation, view_specs: Sequence[PhotometricSpec]
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """Pure step. `batch['images']` is uint8 `[B, V, H, W, 3]` (CPU-cropped views); the
    photometric augmentation of each view runs here, on the accelerator."""

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)
        aug_rng, loss_rng = jax.random.split(rng)
        views = [
            photometric(batch["images"][:, v], jax.random.fold_in(aug_rng, v), view_specs[v])
            for v in range(method.num_views)
        ]
        method_state = method.before_step(state.params, state.method_state, state.step)

        def loss_fn(params):
            return method.loss(params, state.batch_stats, method_state, views, batch, loss_rng)

        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=aux.batch_stats,
            opt_state=opt_state,
            method_state=method.after_step(method_state, aux.state_update),
        )
        return new_state, aux.metrics

    return train_step


def jit_train_step(step_fn: Callable, mesh: Mesh) -> Callable:
    """Compile with the batch sharded over `data` and the state replicated (donated)."""
    return jax.jit(
        step_fn,
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )
