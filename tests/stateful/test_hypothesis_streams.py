"""A hypothesis test's stream depends on its seed alone, not on what was imported before it
(``hypothesis_seed_alone`` in tests/conftest.py): importing a module full of constants between
two runs of the same seeded test leaves the values it draws unchanged. Without the fixture the
second run draws other values (hypothesis mines the constants of every local module it sees)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from hypothesis import Phase, given, seed, settings
from hypothesis import strategies as st


def drawn(n: int) -> list[int]:
    """The integers a seeded hypothesis test draws, in order."""
    out: list[int] = []

    @seed(n)
    @settings(max_examples=50, database=None, phases=[Phase.generate], deadline=None)
    @given(st.integers(0, 1000))
    def record(x: int) -> None:
        out.append(x)

    record()
    return out


def test_importing_a_module_does_not_change_a_seeded_stream(
        hypothesis_seed_alone: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = drawn(3)
    # integers hypothesis would mine (it skips those between -100 and 100) and draw from 0..1000
    (tmp_path / "mmusim_constants_probe.py").write_text(
        '"""Constants for hypothesis to find."""\nTABLE = (%s,)\n' % ", ".join(map(str, range(100, 1000, 7))))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        importlib.import_module("mmusim_constants_probe")
        assert drawn(3) == before
    finally:
        sys.modules.pop("mmusim_constants_probe", None)
    assert drawn(4) != before  # and the seed does choose the stream
