"""Fixtures and hooks for the whole suite.

The suite runs in a shuffled order (pytest-randomly, a test extra: modules shuffled, and the
tests in each module); ``pytest_terminal_summary`` prints the seed at the end, under ``-q``
too, so that a failure that depends on the order can be run again in that order
(``--randomly-seed=N``; ``-p no:randomly`` for file order).

``hypothesis_seed_alone``: a hypothesis test's stream of choices depends on its seed (and the
hypothesis version) and on nothing that ran before it. Without it, it also depends on which
modules happen to be imported: hypothesis (since 6.131) mines the integer, float and string
constants of every *local* module in ``sys.modules`` (anything outside site-packages and the
standard library, not under a ``tests`` directory: here ``nodes``, ``cluster``, ``workloads``,
and ``nodes/rpc/pb`` with its many constants) and now and then (p = 0.05 per draw) draws one of
them instead of a random value (``hypothesis.internal.conjecture.providers``,
``_get_local_constants``). So ``pytest tests/stateful`` and ``pytest tests/integration
tests/stateful`` ran the state machine on different streams: the pool had grown by the modules
the integration tests import. The fixture gives hypothesis an empty local pool (its built-in
pool of constants stays) and a fresh cache of the allowed constants, for the test only.

It reaches into hypothesis internals; ``test_hypothesis_streams.py`` fails if a hypothesis
upgrade makes it stop working (the stream changes again when a module is imported).
"""

from __future__ import annotations

from typing import Iterator

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("randomly") and config.getoption("randomly_reorganize", False):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(f"tests shuffled with --randomly-seed={seed} (run again with it for this order; "
                                    f"-p no:randomly for file order)")


@pytest.fixture
def hypothesis_seed_alone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover - hypothesis is a test extra
        pytest.skip("hypothesis is not installed")
    if hasattr(providers, "_get_local_constants"):  # hypothesis >= 6.131; before, no local constants
        empty = providers.Constants()
        monkeypatch.setattr(providers, "_get_local_constants", lambda: empty)
        monkeypatch.setattr(providers, "CONSTANTS_CACHE", type(providers.CONSTANTS_CACHE)(1024))
    yield
