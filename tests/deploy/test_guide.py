"""The deploy guide's ``ray start`` path, run as written on simulated fresh machines.

deploy/README.md marks the shell blocks a user types with ``<!-- guide-test: NAME -->``:
``head`` (on the head machine), ``worker`` (on each other machine), ``run`` (on the head), and
``one-machine`` (several nodes on one machine). This test runs exactly those blocks, with the
placeholders ``HEAD_IP`` (the head's address) and ``THE_TOKEN`` (what the head printed) filled
in, on machines made of a network namespace (``netns_hosts.Hosts``: its own address on a private
bridge, no route anywhere else) plus a private mount namespace with its own empty ``/tmp`` and
an empty home directory: a fresh machine as far as Ray can tell (no ``/tmp/ray``, no
``~/.ray/auth_token``). The only thing not run is the ``pip install .`` of the guide: every
machine uses this checkout's installation (``PYTHONPATH`` = the repository).

Then it checks what the guide promises: the run prints its table and writes results.json, with
one partition on each machine and clean invariants; on one machine, the two partitions on
127.0.0.2 and 127.0.0.3. Everything is bounded in time and torn down by pid (``Hosts.destroy``
kills the anchors and Ray alike), never with ``ray stop``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from netns_hosts import Hosts, unsupported_reason
from ray_hosts import ROOT

pytestmark = pytest.mark.slow

GUIDE = ROOT / "deploy" / "README.md"
BLOCK_TIMEOUT_S = 240.0  # one block: `ray start` a few seconds, a quickstart run ten; a bound
PLACEHOLDERS = {"HEAD_IP", "THE_TOKEN"}


def guide_blocks() -> dict[str, str]:
    """The shell blocks of the guide marked for this test, by name."""
    found = re.findall(r"<!-- guide-test: ([\w-]+) -->\n```sh\n(.*?)```", GUIDE.read_text(), re.S)
    blocks = dict(found)
    assert len(blocks) == len(found), "a guide-test name is used twice"
    return blocks


class Machine:
    """Host ``i`` of ``hosts`` with a private ``/tmp`` (a tmpfs) and home (``/tmp/home``), kept
    by an anchor process whose namespaces every command enters."""

    def __init__(self, hosts: Hosts, i: int):
        self.hosts, self.i = hosts, i
        if Path("/tmp") in ROOT.parents:
            # a checkout under /tmp (a CI clone) would be hidden by the fresh /tmp: hold it open
            # (fd 3) across the mount and bind it back (only in this private namespace; the
            # bind must not canonicalize, or /proc/self/fd/3 would resolve to the new /tmp)
            script = (f"exec 3<{ROOT} && mount -t tmpfs tmpfs /tmp && mkdir /tmp/home && mkdir -p {ROOT} && "
                      f"mount --no-canonicalize --bind /proc/self/fd/3 {ROOT} && exec 3<&-")
        else:
            script = "mount -t tmpfs tmpfs /tmp && mkdir /tmp/home"
        script += " && echo ready && exec sleep 3600"
        self.anchor = hosts.popen(i, ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.anchor.stdout.readline()  # type: ignore[union-attr]  # blocks until the mount is made
        self.anchor.stdout.close()  # type: ignore[union-attr]
        if line.strip() != "ready":
            self.anchor.kill()
            self.anchor.wait()
            raise AssertionError(f"machine {i}: could not make a private /tmp: {line!r}")

    def path(self, inside: str) -> Path:
        """A path of this machine's file system, as seen from outside."""
        return Path(f"/proc/{self.anchor.pid}/root") / inside.lstrip("/")

    def sh(self, script: str) -> subprocess.CompletedProcess[str]:
        """Run ``script`` in bash on this machine, in a fresh login's environment, in its home."""
        env = {"HOME": "/tmp/home", "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
               "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8"}
        argv = ["nsenter", "-t", str(self.anchor.pid), "-m", "-n",
                "env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", "-euo", "pipefail", "-c", f"cd\n{script}"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)

    def close(self) -> None:
        if self.anchor.poll() is None:
            self.anchor.kill()
        self.anchor.wait()


def fill(block: str, **values: str) -> str:
    used = set(re.findall(r"\b[A-Z][A-Z_]{3,}\b", block)) - {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    assert used <= PLACEHOLDERS, f"the guide uses placeholders this test does not know: {sorted(used - PLACEHOLDERS)}"
    for key, value in values.items():
        block = block.replace(key, value)
    return block


def ok(proc: subprocess.CompletedProcess[str], what: str) -> str:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture
def machines() -> Iterator[list[Machine]]:
    reason = unsupported_reason()
    if reason is not None:
        pytest.skip(reason)
    if not all(shutil.which(tool) for tool in ("nsenter", "unshare")):
        pytest.skip("nsenter and unshare (util-linux) are needed to give each machine its own /tmp")
    hosts = Hosts(4)  # three machines for the cluster, one for the one-machine variant
    made: list[Machine] = []
    try:
        hosts.create()
        hosts.check_routes()
        made = [Machine(hosts, i) for i in range(hosts.n)]
        yield made
    finally:
        for m in made:
            m.close()
        problems = hosts.destroy()
    assert problems == [], f"tear-down left things behind: {problems}"


def test_the_guides_ray_start_commands_run_as_written_on_fresh_machines(machines: list[Machine]) -> None:
    blocks = guide_blocks()
    assert set(blocks) == {"head", "worker", "run", "one-machine"}, sorted(blocks)
    hosts = machines[0].hosts
    head_ip = hosts.ip(0)
    head, workers, single = machines[0], machines[1:3], machines[3]

    printed = ok(head.sh(fill(blocks["head"], HEAD_IP=head_ip)), "the head's block")
    token = head.path("/tmp/home/.ray/auth_token").read_text().strip()
    assert token and token in printed  # `ray get-auth-token --generate` printed the token it made
    for w in workers:
        ok(w.sh(fill(blocks["worker"], HEAD_IP=head_ip, THE_TOKEN=token)), f"the worker's block on machine {w.i}")
    out = ok(head.sh(fill(blocks["run"], HEAD_IP=head_ip)), "the run block")
    assert "invariants:" in out and "0 violations" in out, out[-2000:]
    out_dir = re.search(r"--out (\S+)", blocks["run"]).group(1)  # type: ignore[union-attr]
    result = json.loads(head.path(f"/tmp/home/{out_dir}/results.json").read_text())
    on_host = sorted(hosts.index_of(p["address"]) for p in result["placement"].values())
    assert on_host == [0, 1, 2], result["placement"]  # one partition per machine
    assert result["invariants"]["violations"] == 0 and result["metrics"]["exit_hang"]["n"] > 0

    # the cluster's machines are done: stop them (by pid) before the next variant starts its own Ray
    for m in machines[:3]:
        for pid in hosts.pids(m.i):
            if pid != m.anchor.pid:
                os.kill(pid, 9)

    out = ok(single.sh(fill(blocks["one-machine"])), "the one-machine block")
    assert "0 violations" in out, out[-2000:]
    out_dir = re.search(r"--out (\S+)", blocks["one-machine"]).group(1)  # type: ignore[union-attr]
    result = json.loads(single.path(f"/tmp/home/{out_dir}/results.json").read_text())
    hosts_used = sorted(p["address"].rsplit(":", 1)[0] for p in result["placement"].values())
    assert hosts_used == ["127.0.0.2", "127.0.0.3"], result["placement"]
    assert result["invariants"]["violations"] == 0
