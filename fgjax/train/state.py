"""The one train-state pytree and its creation."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from fgjax.methods.base import Method, backbone_variables, replace_backbone

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue bit-for-bit after a restart (the method's
    frozen inputs are not here: they are reloaded from their files at every start).

    `rng` is a raw uint32 key (checkpointable); each step derives its randomness
    as `fold_in(rng, step)`, so the stream does not depend on when a run resumed.
    `bad_steps` counts the non-finite steps in a row (skipped updates).
    """

    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    method_state: PyTree
    rng: jax.Array
    bad_steps: jax.Array


def create_train_state(
    method: Method,
    tx: optax.GradientTransformation | None,
    image_shape: tuple[int, ...],
    seed: int,
    init_from: str = "",
) -> TrainState:
    """Initialise the online network, optionally load a pretrained backbone, then build
    the method state (so a target/key encoder starts as a copy of the loaded weights).
    `tx=None` (evaluation only) leaves `opt_state` empty."""
    root = jax.random.PRNGKey(seed)
    init_rng, state_rng, train_rng = jax.random.split(root, 3)
    params, model_state = jax.jit(method.init_variables, static_argnums=1)(init_rng, image_shape)
    if init_from:
        from fgjax.weights import load_pretrained

        loaded, report = load_pretrained(
            init_from, backbone_variables(params, model_state), method.config.model.arch
        )
        print(f"init_from {init_from}: {report}")
        params, model_state = replace_backbone(params, model_state, loaded)
    method_state = method.init_state(params, model_state, state_rng)
    # A method state that starts as a copy of the params (key/target encoders) must not
    # alias their buffers: the train step donates the whole state.
    method_state = jax.tree.map(jnp.copy, method_state)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params) if tx is not None else {},
        method_state=method_state,
        rng=train_rng,
        bad_steps=jnp.zeros((), jnp.int32),
    )
