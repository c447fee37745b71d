"""A real three-host Ray cluster on this machine, for the multi-host tests (``ray_hosts`` in
conftest.py wraps ``three_host_ray``).

It makes three test hosts (``netns_hosts.Hosts``: network namespaces on a private bridge,
10.77.S.1-3), checks their routes, and starts Ray the way the deploy guide does: a head with
``ray start --head --port=6379 --node-ip-address=...`` in h0, then ``ray start
--address=HEAD:6379 --node-ip-address=...`` in h1 and h2. Test-only flags on top: each node its
own ``--temp-dir`` (nodes started at once with a shared one collide on socket names), one CPU
and a 100 MB object store, no dashboard. Every Ray process and every driver runs inside a host.

The environment of every node: no auth token, no usage stats, and fast node-death detection
(the head declares a silent node dead after about 5.5 s instead of about 63 s). It waits until
all three nodes are alive (``ray_ready.py``, run inside h0) and tears everything down at the end
by pid (``Hosts.destroy``), never with ``ray stop``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from netns_hosts import Hosts, unsupported_reason

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
GCS_PORT = 6379
NODE_START_TIMEOUT_S = 90.0  # `ray start` on a busy 2-core machine takes a few seconds: a bound
READY_TIMEOUT_S = 60.0
OBJECT_STORE_BYTES = 100 * 1000 * 1000
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


class Unsupported(Exception):
    """This machine cannot make test hosts; the message says why."""


def ray_cli() -> list[str]:
    """The `ray` command of this interpreter's installation."""
    script = Path(sys.executable).parent / "ray"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def child_env() -> dict[str, str]:
    """This process's environment without any RAY_ setting of its own, plus ``RAY_ENV`` and the
    repository on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"(no {path.name})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class RayHosts:
    """A running three-host Ray cluster: its hosts, the head's GCS address, a scratch dir."""

    hosts: Hosts
    address: str
    base: Path
    env: dict[str, str]

    def python(self, i: int, args: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Popen ``python ARGS`` inside host ``i``, in the repository, with the nodes' env."""
        return self.hosts.popen(i, [sys.executable, *args], cwd=ROOT, env=self.env, **kw)


def wait_ok(proc: subprocess.Popen[Any], what: str, timeout: float, log: Path) -> None:
    """Wait for ``proc`` to exit 0 within ``timeout``; fail naming ``what`` with its log's end."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{what} did not finish within {timeout:g} s; {log.name} ends:\n{tail(log)}") from None
    if code != 0:
        raise AssertionError(f"{what} exited {code}; {log.name} ends:\n{tail(log)}")


@contextlib.contextmanager
def three_host_ray() -> Iterator[RayHosts]:
    """Three hosts with a Ray node each, all alive; everything gone afterwards. Raises
    ``Unsupported`` when the machine cannot make network namespaces, and AssertionError when
    the tear-down left something behind."""
    reason = unsupported_reason()
    if reason is not None:
        raise Unsupported(reason)
    hosts = Hosts(3)
    # short: Ray's socket paths under it must fit the 107 bytes of an AF_UNIX address
    base = Path(tempfile.mkdtemp(prefix=f"{hosts.prefix}-", dir="/tmp"))
    env = child_env()
    try:
        try:
            hosts.create()
        except RuntimeError as e:
            if "Operation not permitted" in str(e) or "Permission denied" in str(e):
                raise Unsupported(f"this machine does not allow network namespaces here: {e}") from None
            raise
        hosts.check_routes()  # before any traffic: the hosts reach each other over eth0, nothing else
        head = f"{hosts.ip(0)}:{GCS_PORT}"
        ray = ray_cli()

        def start(i: int) -> tuple[subprocess.Popen[Any], Path]:
            where = ["--head", f"--port={GCS_PORT}", "--include-dashboard=false"] if i == 0 else [f"--address={head}"]
            argv = [*ray, "start", *where, f"--node-ip-address={hosts.ip(i)}", f"--temp-dir={base / f'h{i}'}",
                    "--num-cpus=1", f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats"]
            log = base / f"start-h{i}.log"
            with open(log, "w") as out:
                return hosts.popen(i, argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=base), log

        proc, log = start(0)
        wait_ok(proc, f"ray start --head in {hosts.ns(0)}", NODE_START_TIMEOUT_S, log)
        workers = [start(i) for i in (1, 2)]
        for i, (proc, log) in zip((1, 2), workers):
            wait_ok(proc, f"ray start --address={head} in {hosts.ns(i)}", NODE_START_TIMEOUT_S, log)
        cluster = RayHosts(hosts, head, base, env)
        ready_log = base / "ready.log"
        with open(ready_log, "w") as out:
            ready = cluster.python(0, [str(HERE / "ray_ready.py"), head, "3", str(READY_TIMEOUT_S)],
                                   stdout=out, stderr=subprocess.STDOUT)
        wait_ok(ready, f"three alive Ray nodes at {head}", READY_TIMEOUT_S + 30, ready_log)
        yield cluster
    finally:
        problems = hosts.destroy()
        shutil.rmtree(base, ignore_errors=True)
    if problems:
        raise AssertionError(f"tear-down left things behind: {problems}")
