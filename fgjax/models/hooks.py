"""Named places whose activation and gradient an explanation can read (Grad-CAM).

`grad_cam_point(module, name, x)` returns `x` unchanged. Applied with a 'perturbations'
collection holding a zero array `name`, the output is `x + zeros`, so the gradient with
respect to that zero array is the gradient with respect to `x`; applied with
`mutable=['intermediates']`, `x` is also recorded there (under `name`, a 1-tuple).
Otherwise, and always during `init` (so no checkpoint or train state gains a
collection), it is a Python no-op: nothing is traced.

    out, inter = net.apply({**variables, 'perturbations': zeros}, x, mutable=['intermediates'])

`zeros` has the structure `net.apply(variables, x, mutable=['perturbations'])[1]` gives.
"""

from __future__ import annotations

import flax.linen as nn
import jax


def grad_cam_point(module: nn.Module, name: str, x: jax.Array) -> jax.Array:
    """`x`, readable as `intermediates/.../name` and differentiable as
    `perturbations/.../name` when those collections are in play (see the module doc)."""
    if module.is_initializing():
        return x
    module.sow("intermediates", name, x)
    return module.perturb(name, x)
