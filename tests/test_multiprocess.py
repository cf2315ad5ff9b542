"""Evaluation on several processes: each reads only its own share of a split, and the
features gathered once at the end equal a single-process extraction. Two real CPU
processes (one device each) joined by `jax.distributed` over gloo."""

import os
import socket
import subprocess
import sys

import numpy as np
from conftest import REPO

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
sys.path.insert(0, SCRIPTS)
from two_process_features import extract  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_read_disjoint_shares_and_gather_the_single_process_features(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    flags = os.environ.get("XLA_FLAGS", "")  # conftest's, so both sides compile alike
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=1".strip()
    port = _free_port()
    script = os.path.join(SCRIPTS, "two_process_features.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(i), str(port), str(tmp_path / f"{i}.npz")],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, out
    results = [np.load(tmp_path / f"{i}.npz") for i in range(2)]

    features, labels, read = extract()  # one process, the whole split
    assert sorted(read) == list(range(len(labels)))
    shares = [set(r["read"].tolist()) for r in results]
    assert not shares[0] & shares[1]  # nobody reads the other's images
    assert shares[0] | shares[1] == set(read.tolist())
    assert abs(len(shares[0]) - len(shares[1])) <= 1
    for r in results:  # every process holds all features, in source order
        np.testing.assert_allclose(r["features"], features, rtol=1e-6)
        np.testing.assert_array_equal(r["labels"], labels)
