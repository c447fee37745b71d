"""Ray for the tests of the ray backend: one small three-node cluster per test module.

``ray_cluster`` starts a head and two worker nodes with ``ray.cluster_utils.Cluster`` on this
machine, connects this process to it, and tears everything down at the end of the module. Each
node gets its own loopback address (127.0.0.2, .3, .4: on Linux all of 127/8 is the loopback
interface), so the nodes look like three hosts and nothing leaves the machine. The address must
not be 127.0.0.1 itself: ``ray.init`` rewrites a localhost address to the machine's outward
address, where the head is not listening. Ray gets its own temp dir, no auth token and no usage
stats; nodes take one CPU and a 100 MiB object store each (the defaults reserve gigabytes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterator

import pytest

HEAD_IP = "127.0.0.2"
WORKER_IPS = ("127.0.0.3", "127.0.0.4")
OBJECT_STORE_BYTES = 100 * 1024 * 1024
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class RayTestCluster:
    """The running test cluster: its GCS address and the IP address of each node."""

    address: str
    node_ips: tuple[str, ...]
    temp_dir: str


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayTestCluster]:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.fail("this process is already connected to Ray; the ray tests need their own cluster")
    # short: Ray's socket paths under it must stay within the 107-byte limit of AF_UNIX
    base = tempfile.mkdtemp(prefix="mmray", dir="/tmp" if os.path.isdir("/tmp") else None)
    env = {**RAY_ENV, "RAY_TMPDIR": base}
    saved = {k: os.environ.get(k) for k in (*env, "RAY_ADDRESS")}
    os.environ.update(env)
    os.environ.pop("RAY_ADDRESS", None)
    cluster = None
    try:
        node = dict(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
        cluster = Cluster(initialize_head=True, head_node_args=dict(
            node, node_ip_address=HEAD_IP, temp_dir=os.path.join(base, "ray"), include_dashboard=False))
        for ip in WORKER_IPS:
            cluster.add_node(**node, node_ip_address=ip)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, _node_ip_address=HEAD_IP)
        yield RayTestCluster(cluster.address, (HEAD_IP, *WORKER_IPS), base)
    finally:
        try:
            ray.shutdown()
        finally:
            if cluster is not None:
                cluster.shutdown()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(base, ignore_errors=True)
