"""One of two CPU processes (one device each) extracting the features of a split together.

    python two_process_features.py PROCESS_ID PORT OUT.npz

Used by tests/test_multiprocess.py: it saves the indices this process's loader read
and the gathered features, which must equal a single-process extraction.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import tiny_config  # noqa: E402


def colour_embed(scale, images):
    """A network-free embedding: the mean colour of each image `[B, 3]`, times `scale`."""
    return jnp.mean(images, axis=(1, 2)) * scale


def extract(process_id: int | None = None, port: int = 0):
    """(features, labels, indices this process read) of the tiny test split."""
    if process_id is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    from fgjax.core.sharding import make_mesh, replicated
    from fgjax.data.datasets import build_source
    from fgjax.eval.features import FeatureExtractor

    mesh = make_mesh()
    sources = {"test": build_source(tiny_config().data, "test")}
    extractor = FeatureExtractor(
        sources,
        mesh,
        image_size=16,
        batch_size=6,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        show_progress=False,
    )
    read = np.concatenate([b["index"][b["mask"]] for b in extractor.loader("test")])
    scale = jax.make_array_from_process_local_data(replicated(mesh), np.float32(2.0))
    feats = extractor.extract("test", colour_embed, scale)
    return feats.features, feats.labels, read


if __name__ == "__main__":
    features, labels, read = extract(int(sys.argv[1]), int(sys.argv[2]))
    np.savez(sys.argv[3], features=features, labels=labels, read=read)
