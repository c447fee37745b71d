"""The ``mmusim demo`` job and the layering rule (workloads -> cluster -> nodes)."""

from __future__ import annotations

import ast
import pathlib

import numpy as np

from workloads.cli import main
from workloads.demo import run_demo

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_demo_shows_the_global_srcu_hang_and_per_mm_removes_it() -> None:
    glob, per_mm = run_demo(streams=3, pages=128, unregisters=8, cpus=2)
    assert (glob.srcu_scope, per_mm.srcu_scope) == ("global", "per_mm")
    assert glob.violations == [] and per_mm.violations == []
    # with a global domain, unregister on an idle mm waits for the other mms' GRU flushes
    assert np.median(glob.unregister_srcu_wait_us) > 10 * max(max(per_mm.unregister_srcu_wait_us), 1.0)


def test_demo_command_prints_both_scopes(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["demo", "--streams", "2", "--pages", "64", "--unregisters", "3"]) == 0
    out = capsys.readouterr().out
    assert "global" in out and "per_mm" in out and "0 violation(s)" in out


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_dependencies_run_one_way() -> None:
    """nodes/ never imports ray, the upper layers, or grpc outside nodes/rpc/; cluster/ never
    imports workloads/."""
    offenders = []
    for path in (ROOT / "nodes").rglob("*.py"):
        banned = {"ray", "cluster", "workloads"} | (set() if "rpc" in path.relative_to(ROOT).parts else {"grpc"})
        if _imports(path) & banned:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(_imports(path) & banned)}")
    for path in (ROOT / "cluster").rglob("*.py"):
        if "workloads" in _imports(path):
            offenders.append(f"{path.relative_to(ROOT)}: workloads")
    assert offenders == []


def test_demo_refuses_an_address_without_the_ray_backend(capsys) -> None:  # type: ignore[no-untyped-def]
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["demo", "--address", "127.0.0.1:6379"])
    assert e.value.code == 2
    assert "--address applies to --backend ray only" in capsys.readouterr().err
