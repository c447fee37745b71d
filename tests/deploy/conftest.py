"""Fixtures of the deploy tests: ``ray_hosts``, a real three-host Ray cluster made of network
namespaces on this machine (``ray_hosts.three_host_ray``), new for each test that asks for it;
skipped with the reason where the machine cannot make namespaces (not root, no ``ip``)."""

from __future__ import annotations

from typing import Iterator

import pytest

from ray_hosts import RayHosts, Unsupported, three_host_ray


@pytest.fixture
def ray_hosts() -> Iterator[RayHosts]:
    try:
        with three_host_ray() as cluster:  # Unsupported can only come from the set-up, before the yield
            yield cluster
    except Unsupported as e:
        pytest.skip(str(e))
