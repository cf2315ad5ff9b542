"""The one train-state pytree and its creation."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from fgjax.core.distributed import say
from fgjax.methods.base import Method
from fgjax.train.checkpoint import conformed, read_saved_state, run_checkpoint

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
    if init_from:
        check_init_from(method, init_from)
    root = jax.random.PRNGKey(seed)
    init_rng, state_rng, train_rng = jax.random.split(root, 3)
    init = jax.jit(method.init_variables, static_argnums=1)
    if init_from:
        # Load into abstract variables first: a file that fills every leaf (a whole HERBS
        # best.pt) then compiles no initialisation at all.
        shapes = jax.eval_shape(lambda: init(init_rng, image_shape))
        params, model_state = load_init_from(method, *shapes, init_from)
        loaded = (params, model_state)
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(loaded)):
            fresh = init(init_rng, image_shape)
            params, model_state = jax.tree.map(_fresh_if_abstract, loaded, fresh)
    else:
        params, model_state = init(init_rng, image_shape)
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


def _fresh_if_abstract(loaded: Any, fresh: jax.Array) -> Any:
    return fresh if isinstance(loaded, jax.ShapeDtypeStruct) else loaded


def check_init_from(method: Method, init_from: str) -> None:
    """Fail early (before any compile) when `init_from` cannot hold what `method` loads."""
    groups = tuple(method.pretrained_groups)
    if groups != ("backbone",) and run_checkpoint(init_from) is None:
        raise ValueError(
            f"config.method={method.name!r} starts {', '.join(groups)} from "
            f"config.model.init_from, and {init_from} is a weights file (a backbone "
            "only): give the training workdir that learned them"
        )


def load_init_from(
    method: Method, params: PyTree, model_state: PyTree, init_from: str
) -> tuple[PyTree, PyTree]:
    """`(params, model_state)` with `method.pretrained_groups` loaded from `init_from`: a
    training workdir (or its `checkpoints/<step>`), whose groups of the same name must have
    the same structure and shapes, or a weights file, from which `method.load_weights`
    takes what it holds (a backbone; HERBS: a `best.pt`'s head too)."""
    groups = tuple(method.pretrained_groups)
    run = run_checkpoint(init_from)
    if run is None:
        from fgjax.weights import read_checkpoint

        notes: list[str] = []
        tensors = read_checkpoint(init_from, notes)
        try:
            params, model_state, report = method.load_weights(tensors, params, model_state)
        except ValueError as err:
            raise ValueError(f"config.model.init_from={init_from}: {err}") from None
        report.notes[:0] = notes
        say(f"init_from {init_from}: {report}")
        return params, model_state

    saved, step = read_saved_state(*run)
    where = f"{run[0]} step {step}"
    params, model_state = dict(params), {c: dict(t) for c, t in model_state.items()}
    for group in groups:
        pairs = [("params", params, saved.get("params", {}))]
        saved_state = saved.get("model_state", {})
        # Collections hold the groups that have such state (HERBS: BN in the head only).
        pairs += [(c, t, saved_state.get(c, {})) for c, t in model_state.items() if group in t]
        for name, target, source in pairs:
            if group not in source:
                raise ValueError(
                    f"config.model.init_from={init_from}: the run ({where}) has no {name} "
                    f"group {group!r} (it has {sorted(source)}); config.method="
                    f"{method.name!r} needs {list(groups)}"
                )
            target[group] = conformed(target[group], source[group], f"{name}/{group}", where)
    say(f"init_from {where}: loaded {', '.join(groups)}")
    return params, model_state
