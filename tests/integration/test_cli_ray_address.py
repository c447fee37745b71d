"""``mmusim demo``/``run --backend ray`` with a Ray address that does not answer: the address is probed
(a socket on this machine) before Ray is started, so the command fails in seconds with one
clear line and exit status 2."""

from __future__ import annotations

from workloads.cli import main


def test_demo_on_ray_with_an_address_that_does_not_answer_exits_2(capsys) -> None:  # type: ignore[no-untyped-def]
    """The address is probed before Ray is touched: one clear line, exit 2, in seconds."""
    assert main(["demo", "--backend", "ray", "--address", "127.0.0.1:1", "--unregisters", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmusim: no Ray cluster at 127.0.0.1:1") and err.count("\n") == 1



def test_run_on_ray_with_an_address_that_does_not_answer_exits_2(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["run", "quickstart", "--backend", "ray", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmusim: no Ray cluster at 127.0.0.1:1") and err.count("\n") == 1
