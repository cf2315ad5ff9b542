"""The one train-state pytree and its creation."""

from __future__ import annotations

from typing import Any

import flax
import jax
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue bit-for-bit after a restart.

    `rng` is a raw uint32 key (checkpointable); each step derives its randomness
    as `fold_in(rng, step)`, so the stream does not depend on when a run resumed.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    method_state: PyTree
    rng: jax.Array


def create_train_state(
    method: Any,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    seed: int,
    init_from: str = "",
) -> TrainState:
    """Initialise the online network, optionally load a pretrained backbone, then build
    the method state (so a target/key encoder starts as a copy of the loaded weights)."""
    root = jax.random.PRNGKey(seed)
    init_rng, state_rng, train_rng = jax.random.split(root, 3)
    params, batch_stats = jax.jit(method.init_variables, static_argnums=1)(init_rng, image_shape)
    if init_from:
        from fgjax.weights import load_pretrained

        backbone = {"params": params["backbone"], "batch_stats": batch_stats["backbone"]}
        loaded, report = load_pretrained(init_from, backbone, method.config.model.arch)
        print(f"init_from {init_from}: {report}")
        params = {**params, "backbone": loaded["params"]}
        batch_stats = {**batch_stats, "backbone": loaded["batch_stats"]}
    method_state = method.init_state(params, batch_stats, state_rng)
    # A method state that starts as a copy of the params (key/target encoders) must not
    # alias their buffers: the train step donates the whole state.
    method_state = jax.tree.map(jax.numpy.copy, method_state)
    return TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        method_state=method_state,
        rng=train_rng,
    )
