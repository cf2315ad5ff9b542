"""Training-free image descriptors (CFGA, SCDA, pooling) of a ResNet's last stage.

    describe = jax.jit(describe_fn(backbone, METHOD_DESCRIPTORS["cfga"], use_lcc=True))
    vectors = describe(variables, images)   # {name: [B, D]}

See `DESCRIPTORS` for the names and their dims, `METHOD_DESCRIPTORS` for the groups the
paper reports together.
"""

from fgjax.core.masks import (
    component_labels,
    largest_component,
    mean_threshold_mask,
    scda_mask,
)
from fgjax.methods.cfga.descriptors.cfga import (
    aggregate,
    cfga_vector,
    kernel_gradients,
    objective,
    response,
)
from fgjax.methods.cfga.descriptors.extract import (
    DESCRIPTORS,
    METHOD_DESCRIPTORS,
    describe_fn,
    descriptor_dim,
)
from fgjax.methods.cfga.descriptors.pooling import masked_avg_max, pooled_descriptors

__all__ = [
    "DESCRIPTORS",
    "METHOD_DESCRIPTORS",
    "aggregate",
    "cfga_vector",
    "component_labels",
    "describe_fn",
    "descriptor_dim",
    "kernel_gradients",
    "largest_component",
    "masked_avg_max",
    "mean_threshold_mask",
    "objective",
    "pooled_descriptors",
    "response",
    "scda_mask",
]
