"""Integration tests: partitions served by grpc.aio on 127.0.0.1 port 0, in this process, in
real time (no Ray). ``live`` runs a test body with connected partitions (p0, p1, ...) and
stops them afterwards whatever happened. They speak plaintext unless ``tls=True``: then mutual
TLS with identities issued by a CA made for the test (``nodes/rpc/identity.py``). A test using
``live`` (or ``transport``) runs once per transport, ``unary`` and ``stream``
(``nodes/rpc/client.py``)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import pytest

from liveparts import run_live
from nodes.rpc import TRANSPORTS


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Each transport of the interconnect in turn."""
    return str(request.param)


@pytest.fixture
def live(transport: str) -> Callable[..., Any]:
    """``live(body, "p0", "p1", **config)``: run ``body(p0, p1)`` on fresh live partitions
    talking over ``transport`` (``tls=True``: over mutual TLS)."""
    return functools.partial(run_live, transport=transport)
